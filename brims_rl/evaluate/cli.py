"""`brims-rl evaluate RUN_DIR|CHECKPOINT`: full-game scores of a checkpoint, optionally with a video of one game.

What is evaluated
    The agent is rebuilt from the checkpoint alone: its stored config (Config.to_dict() at training time) says which
    env, protocol, encoder and core to build, and its "model" holds the weights. Nothing else in the run folder is
    read. Games are played under the evaluation protocol (`make_vec_env(..., training=False)`): the training
    preprocessing, but no episodic life and no reward clipping, so a score is the unclipped score of a whole game
    (until game over or the time limit, env.max_episode_steps agent steps; `--max-episode-steps` lowers it).
    The core's state is carried from step to step and reset at the first observation of every game (the `first`
    flags are passed as episode_starts, as the training rollout does).

Lives (evaluation as trained)
    When the run trained with episodic life (Atari), each life loss is handled as the training env did: the next
    step starts the new life (FIRE where fire reset is on and the game has FIRE; envpool also runs its no-ops) and
    the core's state resets at the new life's first observation. Scores are still whole games. `--no-life-reset`
    plays the lives of a game as one continuous episode instead (no reset, no FIRE: in games such as Breakout a
    policy that never presses FIRE then sits out the game until the time limit).

Which episodes count (not biased toward short games)
    E = min(--episodes N, --num-envs) envs are run, env i seeded with seed + i. Env i has a quota of
    N // E + (1 if i < N % E else 0) games and only its FIRST quota games count; games it plays after that are
    discarded. The set of counted games is therefore fixed by (seed, N, E) and the policy, never by which games
    happen to end first (stopping at "the first N games to finish" over-samples short ones). Episodes are numbered
    env by env: env 0's games first, in the order it played them, then env 1's, ...; episode 1 is env 0's first
    game, the one `--video` records.

Actions and seeds
    `--greedy` takes the most likely action (the argmax of the logits; per component for MultiDiscrete; the mean
    for Box actions, see docs/spaces.md); otherwise actions are sampled on the CPU from a torch.Generator seeded with
    the seed, so a sampled evaluation is repeatable too. Box actions reach the env clipped to its bounds. The default seed is the run's training seed +
    1000 (away from the seeds its training envs used). Envs are seeded from the seed, so `--greedy --seed S` gives
    identical scores every time.

Output
    Each episode's score and length, then mean ± std (population std, ddof=0) on stdout; a progress line on stderr
    for long evaluations; `eval.json` (schema below) in the run folder: the folder holding `checkpoints/` when the
    checkpoint lies in a folder called `checkpoints`, else (or when the run folder is not writable) next to the
    checkpoint. It is written atomically and replaces an older eval.json there.

eval.json
    format "brims-rl-eval/1"; checkpoint (absolute path), global_step, updates, core, agent; scores, lengths (lists,
    episode order as above); episodes (list of {episode, env, game, score, length}); mean, std, std_ddof (0);
    settings {episodes, num_envs, greedy, seed, device, life_reset (true: lives handled as in training, see Lives),
    env {id, kind, protocol "evaluation", and for Atari the backend and every preprocessing option with episodic_life
    (per-life scores) and reward_clip false}}; video (null, or {path, frames, episode 1, matched, mismatch});
    finished_at (local ISO time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brims_rl import checkpoint
from brims_rl.atomic import write_text_atomic
from brims_rl.config import EnvConfig
from brims_rl.environments import make_vec_env, resolve_env
from brims_rl.errors import UserError, describe_os_error
from brims_rl.evaluate import module_views
from brims_rl.evaluate.play import episode_quotas, play
from brims_rl.progress import LiveLine, format_duration
from brims_rl.runtime import count, resolve_device

FORMAT = "brims-rl-eval/1"
DEFAULT_EPISODES = 10
DEFAULT_NUM_ENVS = 8
SEED_OFFSET = 1000  # default evaluation seed = training seed + SEED_OFFSET
EVAL_FILE = "eval.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="full-game scores of a checkpoint (optionally a video)",
        description="Play full games (no episodic life, unclipped rewards) with a checkpoint's policy; print each "
                    "score and mean ± std (population std); write eval.json in the run folder.")
    p.add_argument("path", type=Path, metavar="RUN_DIR|CHECKPOINT",
                   help="a run folder (its checkpoints/latest.pt is used) or a checkpoint file")
    p.add_argument("--episodes", type=count, default=DEFAULT_EPISODES,
                   help=f"games to count (default {DEFAULT_EPISODES}); env i counts only its first games, see docs")
    p.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    p.add_argument("--seed", type=count, help=f"env seed (env i gets seed + i) and sampling seed "
                                              f"(default: the run's seed + {SEED_OFFSET})")
    p.add_argument("--video", type=Path, metavar="PATH.mp4", help="write the first episode (env 0's first game) "
                                                                  "as an RGB mp4")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--num-envs", type=count, help=f"parallel envs (default {DEFAULT_NUM_ENVS}; never more than "
                                                  "--episodes)")
    p.add_argument("--no-life-reset", action="store_true",
                   help="play a game's lives as one episode: no core reset and no FIRE at a life loss (default, "
                        "when the run trained with episodic life: handle each life loss as training did)")
    p.add_argument("--max-episode-steps", type=count, metavar="STEPS",
                   help="Atari only: end games at this many agent steps (time limit, recorded in eval.json); "
                        "default: the run's env.max_episode_steps")
    p.set_defaults(func=run)


def output_folder(checkpoint_file: Path) -> Path:
    """Where eval.json goes: the run folder (RUN/checkpoints/x.pt -> RUN) if writable, else next to the checkpoint."""
    file = Path(checkpoint_file).resolve()
    if file.parent.name == "checkpoints":
        run_dir = checkpoint.run_dir_of(file)
        if os.access(run_dir, os.W_OK):
            return run_dir
    return file.parent


class EpisodeProgress:
    """Episodes done, steps, steps/s, mean score and elapsed time (short evaluations print nothing)."""

    def __init__(self, total: int, stream=None, interval_s: float = 10.0) -> None:
        self.total, self.line = total, LiveLine(stream, interval_s)
        self.start = time.monotonic()
        self.done, self.steps, self.scores = 0, 0, []

    def step(self, num_envs: int) -> None:
        self.steps += num_envs
        if self.line.due():
            elapsed = time.monotonic() - self.start
            mean = f"{np.mean(self.scores):.1f}" if self.scores else "-"
            self.line.write(f"episodes {self.done}/{self.total} | {self.steps:,} steps | "
                            f"{self.steps / max(elapsed, 1e-9):,.0f} steps/s | mean score {mean} | "
                            f"{format_duration(elapsed)}")

    def episode(self, score: float) -> None:
        self.done += 1
        self.scores.append(score)

    def close(self) -> None:
        self.line.close()


def _number(x: float) -> str:
    """A score as printed: integers without a decimal point, other values exactly (repr round-trips)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(float(x))


def _env_settings(env_cfg: EnvConfig, kind: str) -> dict[str, Any]:
    if kind != "atari":
        return {"id": env_cfg.id, "kind": kind, "protocol": "evaluation"}
    data = dataclasses.asdict(env_cfg)
    for key in ("num_envs", "threads"):
        data.pop(key)
    data.update(kind=kind, protocol="evaluation", episodic_life=False, reward_clip=False)
    return data


# ---- the command -----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.num_envs is not None and args.num_envs < 1:
        raise UserError(f"--num-envs must be at least 1, got {args.num_envs}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be at least 1, got {args.max_episode_steps}")
    video_path = None
    if args.video is not None:
        from brims_rl.evaluate.video import check_video_path

        video_path = check_video_path(args.video)
    device = resolve_device(args.device)

    file, payload, config = checkpoint.load_checkpoint(args.path)
    spec = resolve_env(config.env.id)
    env_cfg = config.env
    if args.max_episode_steps is not None:
        if spec.kind != "atari":
            raise UserError("--max-episode-steps applies to Atari games only (gymnasium envs keep their own limit)")
        env_cfg = dataclasses.replace(env_cfg, max_episode_steps=args.max_episode_steps)
    seed = args.seed if args.seed is not None else config.seed + SEED_OFFSET
    num_envs = min(args.episodes, args.num_envs if args.num_envs is not None else DEFAULT_NUM_ENVS)
    quotas = episode_quotas(args.episodes, num_envs)
    folder = output_folder(file)

    life_reset = spec.kind == "atari" and env_cfg.episodic_life and not args.no_life_reset
    env = make_vec_env(env_cfg, num_envs, seed=seed, training=False, life_reset=life_reset)
    recorder = None
    modules = None  # RIMs/BRIMs: env 0's first game's module trace, for modules.png and the video's panel
    progress = EpisodeProgress(args.episodes)
    try:
        agent = checkpoint.build_agent(payload, config, env.single_observation_space.shape,
                                       env.single_action_space, device)
        generator = None if args.greedy else torch.Generator().manual_seed(seed)
        modules = module_views.FirstGameTrace.for_core(agent.core)
        if video_path is not None:
            from brims_rl.evaluate.video import Recorder

            panel = module_views.ModulePanel(modules.module_counts) if modules else None
            recorder = Recorder(env_cfg, seed, video_path, life_reset=life_reset, panel=panel)
        step_count = int(payload.get("global_step", 0))
        where = f"{spec.name}, {env_cfg.backend}" if spec.kind == "atari" else spec.name
        if spec.kind == "atari":
            where += f", life reset {'on' if life_reset else 'off'}"
        print(f"brims-rl: evaluating {file} (step {step_count:,}; {where}; core {config.core.name}) | "
              f"{args.episodes} episodes on {num_envs} envs | {'greedy' if args.greedy else 'sampled'} | "
              f"seed {seed} | device {device}", flush=True)

        def on_step(actions: np.ndarray, step: Any) -> None:
            progress.step(num_envs)
            env0_over = any(i == 0 for i, _, _ in step.episodes)
            active = modules.step(env0_over) if modules is not None else None
            if recorder is not None and not recorder.done:
                recorder.step(actions[0], float(step.reward[0]), env0_over, modules=active)

        games = play(env, agent, device, quotas, args.greedy, generator, on_step=on_step,
                     on_episode=lambda i, score, length: progress.episode(score))
        if recorder is not None:
            recorder.finish()
    except KeyboardInterrupt:
        if recorder is not None:
            recorder.abort()
        print("brims-rl: evaluation interrupted; nothing written", file=sys.stderr)
        return 130
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    finally:
        progress.close()
        env.close()

    episodes = [{"episode": 0, "env": i, "game": k + 1, "score": score, "length": length}
                for i, env_games in enumerate(games) for k, (score, length) in enumerate(env_games)]
    for n, record in enumerate(episodes, start=1):
        record["episode"] = n
        print(f"episode {n}: score {_number(record['score'])} | length {record['length']} steps | "
              f"env {record['env']}, game {record['game']}")
    scores = np.array([e["score"] for e in episodes], dtype=np.float64)
    mean, std = float(scores.mean()), float(scores.std(ddof=0))
    print(f"score {mean:.2f} ± {std:.2f} (mean ± population std over {len(episodes)} episodes)")

    video = None
    if recorder is not None:
        video = {"path": str(video_path.resolve()), "frames": recorder.frames, "episode": 1,
                 "matched": recorder.matched, "mismatch": recorder.mismatch}
        print(f"video: {video_path} ({recorder.frames} frames = episode 1's {episodes[0]['length']} steps + the "
              f"first frame)")
        if not recorder.matched:
            print(f"brims-rl: warning: the video's RGB env did not replay episode 1 exactly ({recorder.mismatch})",
                  file=sys.stderr)

    record = {
        "format": FORMAT,
        "checkpoint": str(file.resolve()),
        "global_step": int(payload.get("global_step", 0)),
        "updates": int(payload.get("updates", 0)),
        "core": config.core.name,
        "agent": config.agent,
        "scores": [e["score"] for e in episodes],
        "lengths": [e["length"] for e in episodes],
        "episodes": episodes,
        "mean": mean,
        "std": std,
        "std_ddof": 0,
        "settings": {"episodes": args.episodes, "num_envs": num_envs, "greedy": bool(args.greedy), "seed": seed,
                     "device": str(device), "life_reset": life_reset, "env": _env_settings(env_cfg, spec.kind)},
        "video": video,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    written = write_eval(record, [folder, file.resolve().parent])
    print(f"wrote {written}")
    if modules is not None:
        write_module_views(modules, written.parent, config.core.name, episodes[0])
    return 0


def write_module_views(modules: Any, folder: Path, core: str, episode: dict[str, Any]) -> None:
    """modules.png beside eval.json: the module trace of episode 1 (env 0's first game)."""
    modules.close()
    active, to_higher = modules.arrays()
    path = folder / module_views.MODULES_FILE
    module_views.plot_modules(active, to_higher, path, f"{core}: modules in episode 1 (env 0's first game; "
                                          f"score {_number(episode['score'])}, {modules.steps} steps)")
    print(f"wrote {path}")


def write_eval(record: dict[str, Any], folders: list[Path]) -> Path:
    """Write eval.json atomically into the first folder that takes it."""
    text = json.dumps(record, indent=2) + "\n"
    errors: list[OSError] = []
    for folder in dict.fromkeys(folders):
        try:
            write_text_atomic(folder / EVAL_FILE, text)
            return folder / EVAL_FILE
        except OSError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise OSError(errors[-1].errno, "; ".join(describe_os_error(e) for e in errors))  # every place failed
