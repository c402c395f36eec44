import time, torch, numpy as np, math
torch.set_num_threads(1)
from agentropy.entropy import step_entropy, _divide
from agentropy.control.hf import ScheduledTemperatureProcessor
from agentropy.control.temperature import schedule_from_name
from agentropy.trace import PHASE_CODE
B,V=32,1007
g=torch.Generator().manual_seed(0)
scores=[torch.randn(B,V,generator=g)*3 for _ in range(128)]
def t(f,n=2000):
    c0=time.thread_time()
    for i in range(n): f(i)
    return (time.thread_time()-c0)/n*1e6
z=scores[0]
print("step_entropy", t(lambda i: step_entropy(scores[i%128])))
print("log_softmax", t(lambda i: torch.log_softmax(scores[i%128],-1)))
ls=torch.log_softmax(z,-1)
print("exp", t(lambda i: torch.exp(ls)))
p=torch.exp(ls)
print("vecdot", t(lambda i: torch.linalg.vecdot(p,ls)))
print("sum", t(lambda i: p.sum(-1)))
print("softmax", t(lambda i: torch.softmax(scores[i%128],-1)))
print("logsumexp", t(lambda i: torch.logsumexp(scores[i%128],-1)))
print("amax", t(lambda i: scores[i%128].amax(-1)))
tt=torch.rand(B)+0.5
print("divide", t(lambda i: _divide(scores[i%128],tt)))
print("entr", t(lambda i: torch.special.entr(p)))
print("item", t(lambda i: p[0,0].item()))
print("tiny add", t(lambda i: tt+1))
x=np.zeros(32)
print("np tiny add", t(lambda i: x+1))
cycle = torch.tensor([PHASE_CODE[q] for q in ("plan", "act", "recover", "answer")])
offs=torch.randint(0,64,(B,),generator=g)
spans=[cycle[((n + offs) // 16) % 4] for n in range(32+129+1)]
for name in ["constant:0.7","phase","edt"]:
    proc=ScheduledTemperatureProcessor(schedule_from_name(name), lambda ids: spans[ids.shape[1]])
    idss=[torch.zeros(B,32+i,dtype=torch.long) for i in range(129)]
    def call(i):
        proc(idss[i%128], scores[i%128])
    # calls must be consecutive; reset every 128
    tot=0;N=0
    for r in range(8):
        proc.reset()
        c0=time.thread_time()
        for i in range(128): proc(idss[i], scores[i])
        tot+=time.thread_time()-c0; N+=128
    print("proc",name,tot/N*1e6)
