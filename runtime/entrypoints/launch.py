"""Starting and stopping the runtime's child processes (scheduler, detokenizer)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from typing import Any

from radixlm.runtime.config import EngineConfig
from radixlm.runtime.managers.detokenizer import run_detokenizer_process
from radixlm.runtime.managers.dp_router import run_router_process
from radixlm.runtime.managers.ipc import IpcAddresses
from radixlm.runtime.scheduler.scheduler_process import run_scheduler_process

_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "TypeError": TypeError}


@dataclass
class RuntimeProcesses:
    addrs: IpcAddresses
    processes: dict[str, Any]  # name -> multiprocessing.Process
    info: dict  # what the scheduler reported when ready

    def terminate(self, grace: float = 3.0) -> None:
        started = [p for p in self.processes.values() if p.pid is not None]
        for proc in started:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in started:
            proc.join(max(deadline - time.monotonic(), 0.05))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        self.addrs.cleanup()


def launch_runtime(cfg: EngineConfig) -> RuntimeProcesses:
    """Spawn the detokenizer and the scheduler (one per tensor-parallel rank of this node);
    return once the model is loaded. A node other than 0 runs its scheduler ranks only.
    A start-up failure (bad weights, no memory...) is raised here with its original type."""
    ctx = mp.get_context("spawn")
    addrs = IpcAddresses.create()
    tokenizer_path = cfg.tokenizer_path or cfg.model_path
    detok = ctx.Process(
        target=run_detokenizer_process,
        args=(tokenizer_path, addrs, cfg.log_level),
        name="radixlm-detokenizer",
        daemon=True,
    )
    # one scheduler per tensor-parallel rank of this node; the first one's start-up report
    # speaks for the runtime
    per_node = cfg.tp_size // cfg.nnodes
    ranks = [
        (dp, tp)
        for dp in range(cfg.dp_size)
        for tp in range(cfg.node_rank * per_node, (cfg.node_rank + 1) * per_node)
    ]
    pipes = [ctx.Pipe(duplex=False) for _ in ranks]
    scheds = {}
    for (dp, tp), (_, writer) in zip(ranks, pipes):
        name = "scheduler" + (f"-dp{dp}" if cfg.dp_size > 1 else "") + (f"-tp{tp}" if tp else "")
        replica_addrs = addrs.for_replica(dp) if cfg.dp_size > 1 else addrs
        scheds[name] = ctx.Process(
            target=run_scheduler_process,
            args=(cfg, replica_addrs, writer, tp, dp),
            daemon=True,
            name=f"radixlm-{name}",
        )
    workers_only = cfg.node_rank > 0
    handle = RuntimeProcesses(addrs, {**scheds, **({} if workers_only else {"detokenizer": detok})}, {})
    try:
        with _main_module_hidden():
            if not workers_only:
                detok.start()
            for proc in scheds.values():
                proc.start()
        infos = []
        for reader, writer in pipes:
            writer.close()
            while not reader.poll(0.2):
                for name, proc in handle.processes.items():
                    if not proc.is_alive():
                        raise RuntimeError(
                            f"the {name} process exited with code {proc.exitcode} during start-up"
                        )
            try:
                infos.append(reader.recv())
            except EOFError:
                raise RuntimeError("a scheduler process exited during start-up") from None
        info = next((i for i in infos if not i.get("ok")), infos[0])
        if not info.get("ok"):
            kind, _, message = info.get("error", "RuntimeError: unknown").partition(": ")
            raise _ERRORS.get(kind, RuntimeError)(message)
        if cfg.dp_size > 1:  # the router comes up once every replica has its model loaded
            reader, writer = ctx.Pipe(duplex=False)
            router = ctx.Process(
                target=run_router_process,
                daemon=True,
                name="radixlm-router",
                args=(addrs, cfg.dp_size, info["max_total_tokens"], writer, cfg.log_level),
            )
            handle.processes["router"] = router
            with _main_module_hidden():
                router.start()
            writer.close()
            if not reader.poll(30) or not reader.recv().get("ok"):
                raise RuntimeError("the data-parallel router did not start")
        handle.info = info
        return handle
    except BaseException:
        handle.terminate()
        raise


@contextlib.contextmanager
def _main_module_hidden():
    """Spawned children normally re-import the parent's __main__ script, which would run a
    user's top-level `Engine(...)` again inside the child (and fails without an
    `if __name__ == "__main__"` guard). The children's entry points live in radixlm, so they
    need nothing from __main__: hide it while the children start."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved_file, saved_spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    had_file = hasattr(main, "__file__")
    try:
        main.__spec__ = None
        if had_file:
            del main.__file__
        yield
    finally:
        main.__spec__ = saved_spec
        if had_file:
            main.__file__ = saved_file
