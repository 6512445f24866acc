"""bench_sleep: what each sleep-cycle phase buys, measured on held-out episodes.

    python bench/bench_sleep.py            # full (about 10-15 min on 2 CPU cores)
    python bench/bench_sleep.py --quick    # a quarter of the steps (a smoke run, numbers noisier)

Data: synthetic reaching-task bags written here (``bags/synthetic.py``) with one world (task_seed)
and two disjoint goal regions: bag set A (blob in the left of the image) and bag set B (right).
Each set is split by episode (20% held out). Model: the default architecture and loss weights on
the small observation config (32x32 images, 1024 audio samples; same code paths as 128x128, a
fraction of the compute). Same seeds for every arm; every number is held-out action error through
the deployment path (``training.fit.action_error``: encode/act with the temporal state carried).

Runs (SleepTrainer, the code behind ``sage-hl-sleep``):
  base     from scratch, wake on A                                 -> bc_gain, information loss
  naive    from base, wake on B for W+S steps, no replay            \\
  sleep    from base, wake on B for W steps + sleep S steps          > forgetting on A's held-out set
           (replay of A, EMA teacher = base, augmentation)          /
  nodream  from sleep, S2 more sleep steps                          \\  held-out error (A and B) with
  dream    from sleep, S2 dream steps                               /   the camera dropped
  <c>      from scratch, wake on A with compressor c, for the three non-default compressors
Final line:
  bench_sleep: bc_gain=<untrained/trained error on A> info_loss_recon=<1-R^2> action_parity=<p>
  forgetting_naive=<rad> forgetting_sleep=<rad> dropout_err_nodream=<rad> dropout_err_dream=<rad>
  train_samples_per_s=<wake phase of base>
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sage_hl_ros.bags.bag_dataset import BagDataset, concat_sequences  # noqa: E402
from sage_hl_ros.bags.dataset_config import DatasetConfig  # noqa: E402
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, goal_region, write_synthetic_bag  # noqa: E402
from sage_hl_ros.core.checkpoint import load_checkpoint  # noqa: E402
from sage_hl_ros.core.config import SageConfig  # noqa: E402
from sage_hl_ros.training.augment import drop_modality  # noqa: E402
from sage_hl_ros.training.config import load_train_config  # noqa: E402
from sage_hl_ros.training.fit import action_error  # noqa: E402
from sage_hl_ros.training.trainer import SleepTrainer  # noqa: E402

SMALL = {"image_height_px": 32, "image_width_px": 32, "depth_height_px": 32, "depth_width_px": 32,
         "audio_window_samples": 1024}
EVAL_STEPS = 4
COMPRESSORS = ("bottleneck", "attention", "hierarchical")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a quarter of the steps and episodes")
    ap.add_argument("--out", help="keep bags, checkpoints and reports here (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (pinned; 2 cores are shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-compressors", action="store_true", help="only the default (hybrid) compressor")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = 0.25 if args.quick else 1.0
    steps = {k: max(4, int(v * q)) for k, v in
             {"base": 400, "new_wake": 150, "new_sleep": 150, "extra": 150, "compressor": 400}.items()}
    episodes = max(100, int(800 * q))
    tmp = None
    if args.out:
        root = Path(args.out)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_sleep_")
        root = Path(tmp.name)
    t_start = time.perf_counter()

    model_yaml = root / "model.yaml"
    model_yaml.write_text(json.dumps({"observation": SMALL, "seed": args.seed}))
    (root / "dataset.yaml").write_text("dataset:\n  val_fraction: 0.2\n")
    obs = SageConfig.from_dict({"observation": SMALL}).observation
    spec = dict(episodes=episodes, steps_per_episode=4, start_noise_rad=0.8, task_seed=7)
    bags = {}
    for name, seed in (("A", 1), ("B", 2)):
        path = root / "bags" / name
        if not path.exists():
            write_synthetic_bag(path, obs, SyntheticBagSpec(seed=seed, **spec, **goal_region(name)))
        bags[name] = str(path)
    ecfg = DatasetConfig(val_fraction=0.2, sequence_steps=EVAL_STEPS, sequence_stride=EVAL_STEPS)
    held = {k: concat_sequences(list(BagDataset(v, obs, ecfg).iter_sequences("val"))) for k, v in bags.items()}
    say(f"bench_sleep: {episodes} episodes per bag set; held-out A {held['A'].num_sequences}, "
        f"B {held['B'].num_sequences} sequences of {EVAL_STEPS} steps; steps {steps}; root {root}")

    def train(name, bag, phases, init=None, replay=None, probes=False, compressor=None, **phase_steps):
        out = root / name
        over = [f"seed={args.seed}", f"phases=[{','.join(phases)}]", f"eval.sequence_steps={EVAL_STEPS}",
                f"eval.probes={'true' if probes else 'false'}", "eval.plots=true", "eval.probe_steps=400",
                "eval.dropped_modalities=[visual,depth,audio,tactile]"]
        over += [f"{p}.steps={s}" for p, s in phase_steps.items()]
        mcfg = model_yaml
        if compressor:
            mcfg = root / f"model_{compressor}.yaml"
            mcfg.write_text(json.dumps({"observation": SMALL, "model": {"compressor": compressor}, "seed": args.seed}))
        cfg = load_train_config(None, over)
        t0 = time.perf_counter()
        trainer = SleepTrainer(cfg, out, [bags[bag]], init=init, replay_bags=replay or [],
                               model_config=None if init else mcfg, dataset_config=root / "dataset.yaml",
                               progress=False, log=lambda m: None)
        report = trainer.run()
        say(f"  {name}: {time.perf_counter() - t0:.0f} s, held-out {bag} error "
            f"{report['stages'][0]['metrics']['new']['action_error']:.4f} -> "
            f"{report['final']['new']['action_error']:.4f} rad")
        return out, report

    def err(ckpt, which, drop=None):
        model = load_checkpoint(ckpt)
        batch = held[which] if drop is None else drop_modality(held[which], drop)
        return action_error(model, batch)

    # 1. behaviour cloning from scratch + information loss of the default compressor
    base, rep = train("base", "A", ["wake"], probes=True, wake=steps["base"])
    bc_gain = rep["stages"][0]["metrics"]["new"]["action_error"] / rep["final"]["new"]["action_error"]
    info = {"hybrid": rep["information_loss"]}
    samples_per_s = rep["phases"]["wake"]["samples_per_s"]

    # 2. forgetting: naive fine-tuning on B vs wake + sleep (replay A, distillation, augmentation)
    naive, _ = train("naive", "B", ["wake"], init=base, wake=steps["new_wake"] + steps["new_sleep"])
    slept, rep_sleep = train("sleep", "B", ["wake", "sleep"], init=base, replay=[bags["A"]],
                             wake=steps["new_wake"], sleep=steps["new_sleep"])
    e_base = {k: err(base, k) for k in "AB"}
    e_naive = {k: err(naive, k) for k in "AB"}
    e_sleep = {k: err(slept, k) for k in "AB"}
    forgetting_naive = e_naive["A"] - e_base["A"]
    forgetting_sleep = e_sleep["A"] - e_base["A"]

    # 3. dream: the same number of extra steps as sleep or as dream, from the slept model
    nodream, _ = train("nodream", "B", ["sleep"], init=slept, replay=[bags["A"]], sleep=steps["extra"])
    dreamt, _ = train("dream", "B", ["dream"], init=slept, replay=[bags["A"]], dream=steps["extra"])
    mods = ("visual", "depth", "audio", "tactile")
    drop = {arm: {m: (err(ck, "A", m) + err(ck, "B", m)) / 2 for m in mods} for arm, ck in
            (("nodream", nodream), ("dream", dreamt))}
    clean = {arm: (err(ck, "A") + err(ck, "B")) / 2 for arm, ck in (("nodream", nodream), ("dream", dreamt))}

    # 4. the other compressors, same data, seed and steps as base
    if not args.skip_compressors:
        for c in COMPRESSORS:
            _, r = train(f"compressor_{c}", "A", ["wake"], probes=True, compressor=c, wake=steps["compressor"])
            info[c] = r["information_loss"] | {"action_error": r["final"]["new"]["action_error"]}
    info["hybrid"]["action_error"] = rep["final"]["new"]["action_error"]

    say("")
    say(f"held-out action error (rad), A / B: base {e_base['A']:.4f} / {e_base['B']:.4f}; "
        f"naive {e_naive['A']:.4f} / {e_naive['B']:.4f}; sleep {e_sleep['A']:.4f} / {e_sleep['B']:.4f}")
    reduction = 1 - forgetting_sleep / forgetting_naive if forgetting_naive > 0 else float("nan")
    say(f"forgetting on A: naive {forgetting_naive:+.4f}, sleep {forgetting_sleep:+.4f} rad "
        f"(sleep cuts forgetting by {100 * reduction:.0f}%)")
    for arm in ("nodream", "dream"):
        say(f"{arm:8s}: clean {clean[arm]:.4f} rad; dropped " +
            ", ".join(f"{m} {v:.4f}" for m, v in drop[arm].items()))
    d0, d1 = drop["nodream"]["visual"], drop["dream"]["visual"]
    say(f"camera dropped: dream {100 * (1 - d1 / d0):.0f}% lower than no dream")
    say("information loss (held-out A): compressor, reconstruction 1-R^2, action parity, deployed error")
    for c, v in info.items():
        say(f"  {c:12s} {v['reconstruction_1mR2']:.4f}  {v.get('action_parity', float('nan')):+.4f}  "
            f"{v['action_error']:.4f} rad")
    say(f"total {time.perf_counter() - t_start:.0f} s")
    summary = {"bc_gain": bc_gain, "info_loss_recon": info["hybrid"]["reconstruction_1mR2"],
               "action_parity": info["hybrid"].get("action_parity"), "forgetting_naive": forgetting_naive,
               "forgetting_sleep": forgetting_sleep, "dropout_err_nodream": d0, "dropout_err_dream": d1,
               "train_samples_per_s": samples_per_s, "errors": {"base": e_base, "naive": e_naive, "sleep": e_sleep},
               "dropped": drop, "clean": clean, "information_loss": info, "steps": steps, "episodes": episodes,
               "quick": args.quick}
    (root / "bench_sleep.json").write_text(json.dumps(summary, indent=1))
    print(f"bench_sleep: bc_gain={bc_gain:.2f} info_loss_recon={info['hybrid']['reconstruction_1mR2']:.4f} "
          f"action_parity={info['hybrid'].get('action_parity', float('nan')):.4f} "
          f"forgetting_naive={forgetting_naive:.4f} forgetting_sleep={forgetting_sleep:.4f} "
          f"dropout_err_nodream={d0:.4f} dropout_err_dream={d1:.4f} train_samples_per_s={samples_per_s:.1f}",
          flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
