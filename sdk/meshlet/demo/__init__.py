"""``meshlet demo``: the whole mesh on one machine, a scripted set of faults, and what the mesh did about them.

Modules, in the order a run uses them (◇ pure, ● I/O):

- ``topology``   ◇ the processes, their ports and their generated configs
- ``supervisor`` ● child processes in their own sessions, always stopped (SIGTERM, then SIGKILL)
- ``probes``     ● HTTP questions to Consul, sidecars' admin pages and metrics pages
- ``addresses``  ● the mesh table, and the certificate and grpcurl line for ``--keep-running``
- ``driver``     ● open-loop traffic to gateway.Checkout through a meshlet channel
- ``script``     ◇ the fault script as fractions of the run
- ``sampler``    ● each second: Consul's passing set and the callers' breakers; the final metrics scrape
- ``scrape``, ``timeline``, ``stats``  ◇ reading what was measured
- ``traces``     ● the span files; ◇ which trace to show
- ``report``     ◇ rich renderables of the findings
- ``run``        ● the order of it all: `run_demo`
"""

from meshlet.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
