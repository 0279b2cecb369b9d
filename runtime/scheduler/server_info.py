"""What the scheduler reports to `/server_info` and the `server_info` control request."""

from __future__ import annotations

import statistics
from typing import Any

from radixlm.runtime.config import EngineConfig
from radixlm.runtime.scheduler.policy import IN_BATCH_PREFIX_THRESHOLD
from radixlm.runtime.scheduler.scheduler import Scheduler


def server_info(cfg: EngineConfig, sched: Scheduler) -> dict[str, Any]:
    """Everything `/server_info` shows of this scheduler: model and device, cache and decode
    statistics, KV usage and whether its accounting holds."""
    runner = sched.runner
    stats = sched.stats
    return {
        "model_path": cfg.model_path,
        "tokenizer_path": cfg.tokenizer_path or cfg.model_path,
        "context_length": runner.context_len,
        "max_total_tokens": runner.max_total_tokens,
        "device": str(runner.device),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "attention_backend": "triton" if runner.attn_backend.use_triton else "torch",
        "quantization": runner.quantization,
        "lm_head_quantization": runner.lm_head_quantization,
        "fp8_gemm": runner.fp8_gemm,
        "tp_size": runner.tp.size,
        "kv_cache_dtype": str(runner.kv_dtype).removeprefix("torch."),
        "schedule_policy": cfg.schedule_policy,
        # requests admitted together that share at least this many uncached tokens are admitted
        # one at a time (the rest a round later, from the cache); None: no such deduplication
        "in_batch_prefix_tokens": IN_BATCH_PREFIX_THRESHOLD if sched.policy.policy == "lpm" else None,
        "cuda_graph_batch_sizes": runner.graph_runner.batch_sizes if runner.graph_runner else [],
        "cache_hit_rate": stats.cache_hit_rate,
        "prompt_tokens": stats.prompt_tokens,
        "cached_tokens": stats.cached_tokens,
        "generated_tokens": stats.generated_tokens,
        "decode_steps": stats.decode_steps,
        "prefill_batches": stats.prefill_batches,
        "retractions": stats.retractions,
        "finished_requests": stats.finished_requests,
        "aborted_requests": stats.aborted_requests,
        # per decode step: the loop iteration and the launch + wait for the step inside it
        # (ms); overhead = the share of the iteration spent in the scheduler's own CPU work,
        # which the device waits for unless overlap scheduling hides it
        "decode_iter_ms": 1e3 * stats.decode_iter_s / stats.decode_steps if stats.decode_steps else None,
        "decode_forward_ms": 1e3 * stats.decode_forward_s / stats.decode_steps
        if stats.decode_steps
        else None,
        "scheduler_overhead": (1 - stats.decode_forward_s / stats.decode_iter_s)
        if stats.decode_iter_s
        else None,
        "decode_iter_s": stats.decode_iter_s,
        "decode_forward_s": stats.decode_forward_s,
        # CUDA only: the device's time per decode step and the share of decode time it sat
        # idle between consecutive decode steps waiting for the host (what overlap hides)
        "overlap_schedule": sched.overlap,
        "overlapped_steps": stats.overlapped_steps,
        "decode_gpu_busy_s": stats.decode_gpu_busy_s,
        "decode_gpu_idle_s": stats.decode_gpu_idle_s,
        "decode_gpu_idle_share": (
            stats.decode_gpu_idle_s / (stats.decode_gpu_idle_s + stats.decode_gpu_busy_s)
            if stats.decode_gpu_busy_s
            else None
        ),
        **_cache_tiers(cfg, sched),
        "speculative_algorithm": cfg.speculative_algorithm,
        "spec_proposed_tokens": stats.spec_proposed_tokens,
        "spec_accepted_tokens": stats.spec_accepted_tokens,
        "spec_acceptance_rate": stats.spec_accepted_tokens / stats.spec_proposed_tokens
        if stats.spec_proposed_tokens
        else None,
        "constrained_decoding": sched.grammars is not None,
        **_grammar_info(sched),
        **sched.usage(),
        "kv_accounting": _accounting(sched),
    }


def _accounting(sched: Scheduler) -> str:
    """ "ok", or what broke: free + evictable + locked + in use == total and request rows
    (counters: cheap), plus the radix tree's self-check when no request is queued or running
    (it walks the whole tree, which must not delay a step each time monitoring polls)."""
    try:
        sched.check_accounting(check_tree=not sched.has_work)
    except AssertionError as exc:
        return str(exc) or "radix tree self-check failed"
    return "ok"


def _cache_tiers(cfg: EngineConfig, sched: Scheduler) -> dict[str, Any]:
    """Where prompt tokens came from (device cache, host tier, recomputed) and, with the host
    tier, what moved between the tiers and how long loads took."""
    stats = sched.stats
    info: dict[str, Any] = {
        "hierarchical_cache": sched.cache.host is not None,
        "device_hit_tokens": stats.cached_tokens - stats.host_cached_tokens,
        "host_hit_tokens": stats.host_cached_tokens,
        "recomputed_tokens": stats.prompt_tokens - stats.cached_tokens,
    }
    host = sched.cache.host
    if host is None:
        return info
    st = sched.cache.host_stats
    info.update(
        hicache_write_policy=cfg.hicache_write_policy,
        hicache_pinned=host.host_pool.pinned,
        bytes_to_host=host.bytes_to_host,
        bytes_to_device=host.bytes_to_device,
        host_loads=st.loads,
        host_loaded_tokens=st.loaded_tokens,
        load_latency_ms_mean=1e3 * st.load_latency_s / st.loads if st.loads else None,
        load_latency_s_total=st.load_latency_s,
        load_latency_ms_p50=1e3 * statistics.median(st.latencies) if st.latencies else None,
        load_latency_ms_max=1e3 * st.max_load_latency_s if st.loads else None,
    )
    return info


def _grammar_info(sched: Scheduler) -> dict[str, Any]:
    grammars = sched.grammars
    if grammars is None:
        return {}
    st = grammars.stats
    return {
        "grammar_cache_hits": st.hits,
        "grammar_cache_misses": st.misses,
        "grammar_compile_time_s": round(st.compile_time_s, 6),
        "grammar_failures": st.failures,
        "jump_forward_tokens": sched.stats.jump_forward_tokens,
    }
