import cProfile, pstats, time, sys, os
import torch
torch.set_num_threads(1)
sys.path.insert(0,'benchmarks')
from bench_multiturn_vs_trl import _agent, _world_and_tasks
from agentropy.agent.runner import RunnerConfig, rollout
from agentropy.control.base import ConstantTemperature
from agentropy.control.temperature import schedule_from_name
model,tok=_agent()
world,tasks=_world_and_tasks(2,4)
batch=[t for t in tasks for _ in range(4)]
cfg=RunnerConfig(max_turns=4,max_new_tokens=160,max_tokens=160,batch_size=16)
sched=schedule_from_name(sys.argv[1] if len(sys.argv)>1 else "constant:1.0")
rollout(model,tok,world,batch,schedule=sched,config=cfg,seed=0)
pr=cProfile.Profile()
c0=time.thread_time()
pr.enable()
eps=rollout(model,tok,world,batch,schedule=sched,config=cfg,seed=1)
pr.disable()
print("cpu s",time.thread_time()-c0, "tokens", sum(t.n_tokens for e in eps for t in e.assistant_turns))
st=pstats.Stats(pr); st.sort_stats(sys.argv[2] if len(sys.argv)>2 else "tottime").print_stats(sys.argv[3] if len(sys.argv)>3 else 30)
