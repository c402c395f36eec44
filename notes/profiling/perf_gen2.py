import time, torch, sys, collections
torch.set_num_threads(1)
sys.path.insert(0,'benchmarks')
from bench_controller import load_model, Timed
import agentropy.control.hf as hf
from agentropy.control.hf import ScheduledTemperatureProcessor
from agentropy.control.temperature import schedule_from_name, PhaseTemperature
from agentropy.trace import PHASE_CODE
acc=collections.Counter()
def wrap(obj,name,key):
    f=getattr(obj,name)
    def w(*a,**k):
        c=time.thread_time(); r=f(*a,**k); acc[key]+=time.thread_time()-c; return r
    setattr(obj,name,w)
wrap(hf,'step_entropy','step_entropy')
wrap(hf,'_divide','divide')
wrap(PhaseTemperature,'update_arrays','update_arrays')
wrap(ScheduledTemperatureProcessor,'_sampling_entropy','samp')
wrap(ScheduledTemperatureProcessor,'_record','record')
wrap(ScheduledTemperatureProcessor,'_phases','phases')
wrap(torch,'equal','equal')
model,desc=load_model(); print(desc)
model.generation_config.eos_token_id=None; model.generation_config.pad_token_id=0
B=32; V=model.config.vocab_size
g=torch.Generator().manual_seed(0)
ids=torch.randint(0,V,(B,32),generator=g)
cycle = torch.tensor([PHASE_CODE[q] for q in ("plan", "act", "recover", "answer")])
offs=torch.randint(0,64,(B,),generator=g)
spans=[cycle[((n + offs) // 16) % 4] for n in range(32+129+1)]
def run(procs,temp):
    c0=time.thread_time()
    with torch.no_grad():
        model.generate(ids,attention_mask=torch.ones_like(ids),logits_processor=procs,do_sample=True,temperature=temp,top_k=None,top_p=None,max_new_tokens=128,min_new_tokens=128)
    return (time.thread_time()-c0)/128*1e6
for r in range(3):
    acc.clear()
    p=Timed(ScheduledTemperatureProcessor(schedule_from_name("phase"),lambda x: spans[x.shape[1]]))
    b=run([p],1.0)
    print(f"phase {b:.0f} us/step, inside {p.cpu_seconds/128*1e6:.0f}", {k:round(v/128*1e6) for k,v in acc.items()})
