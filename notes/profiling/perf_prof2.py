import time, torch, numpy as np, sys, statistics
torch.set_num_threads(1)
from agentropy.control.hf import ScheduledTemperatureProcessor
from agentropy.control.temperature import schedule_from_name
from agentropy.trace import PHASE_CODE
B,V=32,1007
span=int(sys.argv[1])
g=torch.Generator().manual_seed(0)
scores=[torch.randn(B,V,generator=g)*3 for _ in range(128)]
cycle = torch.tensor([PHASE_CODE[q] for q in ("plan", "act", "recover", "answer")])
offs=torch.randint(0,4*span,(B,),generator=g)
spans=[cycle[((n + offs) // span) % 4] for n in range(32+129+1)]
idss=[torch.zeros(B,32+i,dtype=torch.long) for i in range(129)]
junk=torch.randn(2000,2000)
res={True:[],False:[]}
for r in range(10):
  for d in (False,True):
    proc=ScheduledTemperatureProcessor(schedule_from_name("phase"), lambda ids: spans[ids.shape[1]], defer_model_entropy=d)
    tot=0
    for i in range(128):
        if len(sys.argv)>2: junk.sum()  # evict caches between calls
        c0=time.thread_time(); proc(idss[i], scores[i]); tot+=time.thread_time()-c0
    res[d].append(tot/128*1e6)
print(span, "eager", statistics.median(res[False]), "defer", statistics.median(res[True]))
