import math, torch, time, statistics
from collections.abc import Sequence
torch.set_num_threads(1)
exec(open('/tmp/sample_ref.py').read())
from agentropy.agent.runner import _sample
g=torch.Generator().manual_seed(0)
L=[torch.randn(16,1007,generator=g)*3 for _ in range(64)]
temps=torch.ones(16)
gens=[torch.Generator().manual_seed(j) for j in range(16)]
res={"old":[],"new":[]}
for r in range(7):
    for name,f in (("old",_sample_ref),("new",_sample)):
        c=time.thread_time()
        for x in L: f(x,temps,gens)
        res[name].append((time.thread_time()-c)/len(L)*1e6)
print({k:round(statistics.median(v),1) for k,v in res.items()})
