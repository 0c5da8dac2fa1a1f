"""CPU seconds of the parts of one ``rl.cpo`` update, on one saved batch.

Samples one batch of ``rl.cpo`` at its defaults (``SafetyPointGoal1-v0``, 16,000 steps in 16
sub-environments, 4 shards, the optimism correction) once and saves it (``--batch``, reused when
it exists), then times each part of the update on it ``--repeats`` times and keeps the best: the
advantages (critic values and GAE of the shards, :func:`rl.rollout.assemble`), the policy step
(:func:`rl.cpo_step.cpo_update`) and its parts (surrogate gradients, the gradients of the halves,
the Fisher products of the solves, the line search), the critic fit
(:func:`rl.critics.fit_critics`) and one progress row written. Times are CPU seconds of this
process (``time.process_time``), which background load on other cores does not inflate. Writes
``cpo_update_profile.json`` and ``.md``::

    .venv/bin/python -m benchmarks.cpo_update_profile [--batch /tmp/cpo_update_batch.pt] [--repeats 3]
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from rl import cpo_step
from rl.cpo import CPOConfig, _init_state, env_spec, make_env, sampling_generator
from rl.critics import fit_critics
from rl.rollout import assemble, submit_sharded
from rl.runtime import RunLogger


def save_batch(cfg: CPOConfig, path: Path) -> None:
    """Sample the first batch of ``cfg`` in this process and save its shards and the run's state."""
    env = make_env(cfg)
    try:
        st = _init_state(cfg, env)
        segments = submit_sharded(
            None,
            env_spec(cfg, env.task),
            st.policy,
            st.params,
            cfg.steps_per_iter,
            st.normalizer,
            shards=cfg.shards,
            generator=sampling_generator(cfg.seed, 0),
        )
    finally:
        env.close()
    torch.save({"segments": segments, "state": st.state_dict(), "env": cfg.env}, path)


def load(cfg: CPOConfig, path: Path) -> tuple[Any, list[Any]]:
    """The run's state (as :func:`rl.cpo.train` has it after the first batch) and the shards."""
    saved = torch.load(path, weights_only=False)
    if saved["env"] != cfg.env:
        raise ValueError(f"{path} holds a batch of {saved['env']!r}, not of --env {cfg.env!r}")
    env = make_env(cfg)
    try:
        st = _init_state(cfg, env)
    finally:
        env.close()
    st.load_state_dict(saved["state"])
    return st, saved["segments"]


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The least CPU time of ``repeats`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return min(times), out


def profile(cfg: CPOConfig, st: Any, segments: list[Any], repeats: int) -> list[dict[str, Any]]:
    """One row per part: its best CPU seconds and, for the solves, the Fisher products computed."""
    rows: list[dict[str, Any]] = []

    def add(part: str, seconds: float, products: int | None = None) -> None:
        rows.append({"part": part, "cpu_s": round(seconds, 4), "fisher_products": products})

    stats_before = st.normalizer.stats()

    def advantages() -> Any:
        return assemble(segments, copy.deepcopy(st.normalizer), st.reward_critic, st.cost_critic, **cfg.gae())

    seconds, batch = best(advantages, repeats)
    add("advantages: critic values and GAE (rl.rollout.assemble)", seconds)
    batch = cfg.view(assemble(segments, st.normalizer, st.reward_critic, st.cost_critic, **cfg.gae()))
    policy, params, step = st.policy, st.params, cfg.step(cfg.delta)
    limits = cfg.limits(batch.cost_channels)

    def metric() -> Any:
        return cpo_step.fisher_metric(policy, params, batch.obs, cfg.damping, parts=cfg.shards)

    seconds, _ = best(metric, repeats)
    add("Fisher metric: activations of the states", seconds)

    def gradients() -> Any:
        theta = params.detach().requires_grad_(True)
        loss_r, loss_c = cpo_step.surrogates(policy, theta, batch)
        outs = torch.cat([loss_r.reshape(1), loss_c])
        return [torch.autograd.grad(o, theta, retain_graph=True)[0] for o in outs]

    seconds, rows_g = best(gradients, repeats)
    add("surrogate gradients g, a (forward + 1 + C backward)", seconds)
    g, A = rows_g[0], torch.stack(rows_g[1:])
    seconds, halves = best(lambda: cpo_step.half_gradients(policy, params, batch), repeats)
    add("gradients of the two halves (optimism)", seconds)
    b = cpo_step.cost_offsets(batch, limits, params.dtype, cfg.cost_confidence)

    def solves() -> dict[str, tuple[float, int, int]]:
        # as in cpo_update: one metric serves the three solves (the third repeats the first's products)
        m, out = metric(), {}
        for name, solve in (
            ("plain", lambda: step.solve(g, A, b, m)),
            ("optimism", lambda: cpo_step.optimism_offsets(*halves, b, m, step, plain=out["plain"][3])),
            ("corrected", lambda: step.solve(g, A, out["optimism"][3][0], m)),
        ):
            calls, hits, t = m.matvec.calls, m.matvec.hits, time.process_time()
            result = solve()
            seconds = time.process_time() - t
            out[name] = (seconds, m.matvec.calls - calls, m.matvec.hits - hits, result)
        return out

    timed = [solves() for _ in range(repeats)]
    for name, part in (
        ("plain", "trust-region solve with the plain offsets (CG)"),
        ("optimism", "optimism correction (CG on the halves' rows, reduced solves)"),
        ("corrected", "trust-region solve with the corrected offsets (CG, the plain solve's products)"),
    ):
        _, calls, hits, _ = timed[-1][name]
        add(f"{part}: {hits} products looked up", min(t[name][0] for t in timed), calls)
    b_eff = timed[-1]["optimism"][3][0]
    res = timed[-1]["corrected"][3]
    seconds, (_, ls) = best(
        lambda: cpo_step.line_search(
            policy, params, res.x.detach(), batch, b_eff, str(res.case), float(step.delta)
        ),
        repeats,
    )
    add(f"line search ({ls['backtracks'] + 1} trials)", seconds)

    def update() -> Any:
        return cpo_step.cpo_update(
            policy, params, batch, limits, step, **cfg.update_options(), debias=cfg.debias
        )

    seconds, (new, info) = best(update, repeats)
    add("policy step in all (rl.cpo_step.cpo_update)", seconds)
    critics = (st.reward_critic, st.cost_critic)
    opts = (st.reward_opt, st.cost_opt)

    def fit() -> Any:
        cs, os_ = copy.deepcopy((critics, opts))
        return fit_critics(
            cs,
            os_,
            batch.obs,
            (batch.ret_r, batch.ret_c),
            cfg.critic_epochs,
            cfg.critic_minibatch,
            torch.Generator().manual_seed(0),
        )

    seconds, _ = best(fit, repeats)
    minibatches = cfg.critic_epochs * -(-len(batch) // cfg.critic_minibatch)
    add(f"critic fit ({cfg.critic_epochs} epochs, {minibatches} minibatches, 2 critics)", seconds)
    seconds, _ = best(lambda: policy.reparametrize_input(new, stats_before, st.normalizer.stats()), repeats)
    add("re-expressing the policy for the new statistics", seconds)
    with tempfile.TemporaryDirectory() as tmp:
        log = RunLogger(Path(tmp), tensorboard=True)
        row = {"iteration": 0, **{k: v for k, v in info.items() if not isinstance(v, list)}}
        seconds, _ = best(lambda: log.log(dict(row)), repeats)
        log.close()
    add("one progress row (CSV and TensorBoard)", seconds)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the profile; write the JSON and Markdown results."""
    p = common.parser(__doc__, common.RESULTS)
    p.add_argument("--env", default="SafetyPointGoal1-v0")
    p.add_argument("--batch", type=Path, default=Path(tempfile.gettempdir()) / "cpo_update_batch.pt")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per part (the best is kept)")
    args = common.parse(p, argv)
    torch.set_num_threads(1)
    cfg = CPOConfig(env=args.env)
    if not args.batch.exists():
        print(f"sampling one batch into {args.batch} ...", flush=True)
        save_batch(cfg, args.batch)
    st, segments = load(cfg, args.batch)
    rows = profile(cfg, st, segments, common.positive("repeats", args.repeats))
    report = {"benchmark": "cpo_update_profile", "env": args.env, "steps": cfg.steps_per_iter}
    report |= {"repeats": args.repeats, "parts": rows} | common.machine(torch=torch.__version__)
    tables = [common.table("Best CPU seconds of each part", rows)]
    title = f"The parts of one rl.cpo update: {args.env}, {cfg.steps_per_iter}-step batch"
    common.write_results(args.out / "cpo_update_profile", title, report, tables)
    for r in rows:
        print(f"{r['cpu_s']:8.3f}  {r['fisher_products'] or '':>4}  {r['part']}")
    return report


if __name__ == "__main__":
    main()
