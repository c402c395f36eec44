import sys, time, statistics, importlib.util, torch, numpy as np
torch.set_num_threads(1)
spec=importlib.util.spec_from_file_location("agentropy.control.temperature_old","/tmp/temperature_old.py")
old=importlib.util.module_from_spec(spec); sys.modules[spec.name]=old; spec.loader.exec_module(old)
from agentropy.control import temperature as new
from agentropy.control.base import StepObservation, obs_arrays, state_arrays
from agentropy.trace import PHASE_CODE
B=32; span=int(sys.argv[1]) if len(sys.argv)>1 else 16
g=torch.Generator().manual_seed(0)
cycle = torch.tensor([PHASE_CODE[q] for q in ("plan", "act", "recover", "answer")])
offs=torch.randint(0,4*span,(B,),generator=g)
obs=[obs_arrays(StepObservation(phase=cycle[((n + offs) // span) % 4], entropy=torch.rand(B,generator=g)*3, prev_sampling_entropy=torch.rand(B,generator=g)*3, active=torch.ones(B,dtype=torch.bool), reset=torch.zeros(B,dtype=torch.bool))) for n in range(256)]
junk=torch.randn(1500,1500)
cold=len(sys.argv)>2
res={"old":[],"new":[]}
for r in range(9):
    for name,mod in (("old",old),("new",new)):
        sch=mod.PhaseTemperature(); st=state_arrays(sch.init(B)); tot=0; temps=[]
        for o in obs:
            if cold: junk.sum()
            c=time.thread_time(); t,st=sch.update_arrays(st,o); tot+=time.thread_time()-c; temps.append(t)
        res[name].append(tot/len(obs)*1e6)
        if name=="old": ref=temps
        else: assert all(np.array_equal(a,b) for a,b in zip(ref,temps))
print(span, "cold" if cold else "hot", {k:round(statistics.median(v),1) for k,v in res.items()})
