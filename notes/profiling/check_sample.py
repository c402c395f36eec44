import math, torch
from collections.abc import Sequence
exec(open('/tmp/sample_ref.py').read())
from agentropy.agent.runner import _sample
n=0
for seed in range(300):
    g=torch.Generator().manual_seed(seed)
    b=int(torch.randint(1,20,(1,),generator=g)); V=int(torch.randint(2,2000,(1,),generator=g))
    logits=torch.randn(b,V,generator=g)*float(torch.rand(1,generator=g)*8)
    if seed%5==0: logits[0, :V//2]=-math.inf
    temps=torch.rand(b,generator=g)*2+0.05
    if seed%3==0: temps[torch.rand(b,generator=g)<0.3]=0.0
    g1=[torch.Generator().manual_seed(1000*seed+j) for j in range(b)]
    g2=[torch.Generator().manual_seed(1000*seed+j) for j in range(b)]
    a=_sample(logits,temps,g1); r=_sample_ref(logits,temps,g2)
    for x,y in zip(a,r):
        assert x.dtype==y.dtype and torch.equal(x,y), (seed, x, y)
    n+=1
print("identical on",n,"cases")
