"""Pipelines: orchestration over the library rooms, not a library room itself.

Each module here strings the rooms together into one end-to-end job and owns no analysis,
sampling or training logic of its own:

- :mod:`~agentropy.pipelines.demo`: bootstrap the tiny agent, train, compare policies, report;
- :mod:`~agentropy.pipelines.compare`: sampling policies side by side on the same held-out tasks
  and faults (``agentropy eval``);
- :mod:`~agentropy.pipelines.experiment`: training arms over seeds, held-out outcomes with
  intervals (``agentropy experiment``);
- :mod:`~agentropy.pipelines.intervention`: the recovery intervention, sampling arms on the same
  tasks and faults (``agentropy experiment --config experiments/recovery_intervention.toml``).

The library rooms (``trace``, ``analysis``, ``control``, ``env``, ``agent``, ``rl``, ``report``)
never import this package; the CLI does, lazily.
"""
