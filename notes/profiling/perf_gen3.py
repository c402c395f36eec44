import time, torch, sys, statistics
torch.set_num_threads(1)
sys.path.insert(0,'benchmarks')
from bench_controller import load_model, Timed
from agentropy.control.hf import ScheduledTemperatureProcessor
from agentropy.control.temperature import schedule_from_name
from agentropy.trace import PHASE_CODE
model,desc=load_model()
model.generation_config.eos_token_id=None; model.generation_config.pad_token_id=0
B=32; V=model.config.vocab_size
span=int(sys.argv[1]) if len(sys.argv)>1 else 16
g=torch.Generator().manual_seed(0)
ids=torch.randint(0,V,(B,32),generator=g)
cycle = torch.tensor([PHASE_CODE[q] for q in ("plan", "act", "recover", "answer")])
offs=torch.randint(0,4*span,(B,),generator=g)
spans=[cycle[((n + offs) // span) % 4] for n in range(32+129+1)]
def run(procs,temp):
    c0=time.thread_time()
    with torch.no_grad():
        model.generate(ids,attention_mask=torch.ones_like(ids),logits_processor=procs,do_sample=True,temperature=temp,top_k=None,top_p=None,max_new_tokens=128,min_new_tokens=128)
    return (time.thread_time()-c0)/128*1e6
res={k:[] for k in ("ref","eager","defer","edt")}
ins={k:[] for k in res}
for r in range(4):
    for k in res:
        if k=="ref": res[k].append(run([],0.7)); ins[k].append(0); continue
        sch = "edt" if k=="edt" else "phase"
        p=Timed(ScheduledTemperatureProcessor(schedule_from_name(sch),lambda x: spans[x.shape[1]], defer_model_entropy=(k=="defer")))
        res[k].append(run([p],1.0)); ins[k].append(p.cpu_seconds/128*1e6)
for k in res: print(k, "step us", round(statistics.median(res[k])), "inside us", round(statistics.median(ins[k])), "share %.1f%%" % (100*statistics.median([i/s for i,s in zip(ins[k],res[k])])))
