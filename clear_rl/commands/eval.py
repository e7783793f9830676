"""Evaluate models on MMD-Bench: clean vs Low/Mid/High accuracy, the drop, trigger rate, latency.

  clear-rl eval --model outputs/clear-rl --data MMStar.tsv RealWorldQA.tsv --out eval_out
  clear-rl eval --model Base=outputs/base --model CLEAR-RL=outputs/grpo --data test.tsv --restore never
  clear-rl eval --model CLEAR-SFT=outputs/sft --data MMStar.tsv --restore never,always,oracle --gallery 4

  clear-rl eval --model CLEAR-RL=outputs/grpo --data LMUData/MMStar.tsv LMUData/R-Bench-Dis.tsv --degraded LMUData/

--data takes clean benchmark files and degraded ones, answered as they are (the released
`<Base>_LOW_LEVEL_<LEVEL>.tsv` and `<Base>_<corruption>.tsv`, R-Bench-Dis); a clean file's levels
come from --data, else --degraded DIR (clear-rl degrade outputs or the released MMD-Bench files,
only read), else are made with --seed under OUT/degraded/. Each model is asked with the system
prompt it was trained with (its clear_rl_recipe.yaml) unless --system-prompt says otherwise;
--protocol paper (default: CLEAR's VLMEvalKit copy, the paper's tables) or vlmevalkit (upstream).
Writes report.md (the paper's tables), scores.{csv,json}, predictions.{csv,json},
trigger_latency.png and, with per-corruption files, corruption_drop.{csv,png}; with restorations also
restoration_quality.csv (PSNR / latent cosine vs the clean rows), restoration_gain.csv (accuracy
always - never, per level and corruption), restoration.png and gallery_<run>.png, and with
several readbacks or an oracle run readback.csv / bridge_fidelity.csv. Several --restore policies
or --readback paths are evaluated side by side, rows labelled `<model> [<policy>, <readback>]`.
Nothing is written beside the inputs. --resume skips rows already answered by an interrupted run.
A --model folder in BAGEL's official layout (BAGEL-7B-MoT, CLEAR's checkpoints) loads as the bagel
backbone under an inference preset (--preset: clear-release, CLEAR's own eval, by default; or
bagel-upstream): its image views, restoration CFG, step count, protocol tags and turns, system prompt
(for a folder without clear_rl_recipe.yaml), readback and VAE posterior, named in report.md. --tags
says how the model writes its tags where the folder records nothing. --cfg-* override
single CFG values, --no-cfg turns guidance off; --steps N is N Euler steps for every backbone (the
release's num_timesteps 50 is --steps 49, the presets' default).
"""

from __future__ import annotations

import argparse
import dataclasses

# The choice sets (clear_rl.choices) and the backbone registry import no torch: building the CLI stays light.
from clear_rl.choices import (
    CFG_CONTEXTS,
    DEGRADED_VIEWS,
    LEVELS,
    RENORMS,
    RESTORE_POLICIES,
    TAGS,
)
from clear_rl.choices import READBACK_CHOICES as READBACKS
from clear_rl.choices import SCORING_PROTOCOLS as PROTOCOLS
from clear_rl.models import registry

HELP = "evaluate models on clean and degraded benchmarks (MMD-Bench protocol)"


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cfg-interval takes LOW,HIGH (e.g. 0.4,1.0), got {text!r}"
        ) from None
    if not 0.0 <= low < high <= 1.0:
        raise argparse.ArgumentTypeError(f"--cfg-interval needs 0 <= LOW < HIGH <= 1, got {text!r}")
    return low, high


def _several(allowed: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        items = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{what} must be among {','.join(allowed)}, got {text!r}")
        return items

    return parse


def _levels(text: str) -> list[str]:
    levels = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in levels if t not in LEVELS]
    if bad or not levels:
        raise argparse.ArgumentTypeError(f"levels must be among {','.join(LEVELS)}, got {text!r}")
    return levels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", action="append", required=True, metavar="[NAME=]DIR",
        help="a saved clear-rl model folder; repeat to compare models (NAME labels its rows)",
    )  # fmt: skip
    parser.add_argument(
        "--data", nargs="+", required=True, metavar="TSV",
        help="VLMEvalKit-style benchmark TSVs: clean files, and degraded ones (the released "
        "MMD-Bench names, R-Bench-Dis) scored at their level as they are",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="paper",
        help="paper (default): CLEAR's VLMEvalKit copy, as the paper's tables (MMVP and CV-Bench as "
        "question accuracy); vlmevalkit: upstream's (MMVP pairs, CV-Bench mean over sources)",
    )  # fmt: skip
    parser.add_argument(
        "--system-prompt", default=None, metavar="TEXT",
        help="ask every model with this system prompt ('' for none) instead of the one each was "
        "trained with (data.system_prompt in its clear_rl_recipe.yaml)",
    )  # fmt: skip
    parser.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    parser.add_argument("--levels", type=_levels, default=list(LEVELS), help="default: clean,low,mid,high")
    parser.add_argument(
        "--restore",
        type=_several(RESTORE_POLICIES, "--restore"),
        default=["model"],
        metavar="POLICY[,POLICY]",
        help="model decides (default); always/never force the baselines; oracle puts the clean "
        "image's latent in the slot (bridge fidelity). Several, comma-separated, run side by side",
    )
    parser.add_argument(
        "--readback",
        type=_several(READBACKS, "--readback"),
        default=["model"],
        metavar="PATH[,PATH]",
        help="how a restoration enters the context: model (default: the preset's for BAGEL-family folders, "
        "clear-release: reencode-vae; else bridge), bridge (the latent bridge), reencode (decode + ViT) or "
        "reencode-vae (decoded to 8-bit pixels and encoded again by the VAE); several: side by side",
    )
    parser.add_argument(
        "--degraded-view",
        choices=DEGRADED_VIEWS,
        default="keep",
        help="after restoring, keep (default) or hide the degraded image's ViT tokens",
    )
    parser.add_argument("--gallery", type=int, default=2, metavar="N",
                        help="rows per corruption in each run's gallery_<run>.png (0: none; default 2)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="tokens a completion holds at most (default: the model's: 256, or for tags as text the "
        "release's 3 turns of 4095 tokens)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=None,
        help="restoration Euler steps (network evaluations); default: the model's (BAGEL presets: 49, "
        "the release's num_timesteps 50)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the degraded copies and sampling")
    parser.add_argument("--degraded", default=None, metavar="DIR",
                        help="a folder of degraded copies to read (clear-rl degrade outputs or the released "
                        "MMD-Bench files); never written: missing levels are made under OUT/degraded/")  # fmt: skip
    parser.add_argument("--judge", action="store_true", help="LLM judge for answers the rules cannot settle, "
                        "and MM-Vet's grader (CLEAR_RL_JUDGE_URL / _MODEL / _API_KEY / _TIMEOUT / _RETRIES / "
                        "_ON_FAILURE)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument(
        "--backbone", choices=registry.backbone_choices(), default=registry.AUTO,
        help="how --model folders load: auto (default: the folder's layout says), or a registered backbone: "
        + ", ".join(registry.backbone_names()),
    )  # fmt: skip
    parser.add_argument(
        "--preset", choices=registry.preset_names(), default=None,
        help="inference preset of BAGEL-family --model folders: clear-release (default: CLEAR's own eval) "
        "or bagel-upstream (ByteDance's defaults); see docs/bagel-release.md",
    )  # fmt: skip
    parser.add_argument(
        "--tags", choices=TAGS, default=None,
        help="how BAGEL-family --model folders write <think>, <answer>, <image_restore>: text (CLEAR's release: "
        "a finished turn holding <image_restore> restores) or tokens (clear-rl's single tokens); default: "
        "what the folder records (a model clear-rl trained: tokens), else the preset's (text)",
    )  # fmt: skip
    cfg = parser.add_argument_group(
        "restoration CFG", "BAGEL's classifier-free guidance of restorations (backbones that offer it); "
        "each flag overrides one value of the preset's (clear-release: 3.0, 1.5, text_channel, 0.4,1.0, "
        "drop-thought)"
    )  # fmt: skip
    cfg.add_argument("--cfg-text", type=float, default=None, help="text guidance scale (1: off)")
    cfg.add_argument("--cfg-img", type=float, default=None, help="image guidance scale (1: off)")
    cfg.add_argument("--cfg-renorm", choices=RENORMS, default=None, help="velocity renorm")
    cfg.add_argument("--cfg-interval", type=_interval, default=None, metavar="LOW,HIGH",
                     help="guided for t in (LOW, HIGH]")  # fmt: skip
    cfg.add_argument(
        "--cfg-contexts", choices=CFG_CONTEXTS, default=None,
        help="what the text-unconditional context drops: the thought turn (CLEAR's eval), only the "
        "<image_restore> tag (CLEAR's consider_think=False), or upstream's (the question and every model turn)",
    )  # fmt: skip
    cfg.add_argument("--no-cfg", action="store_true", help="restore without guidance")


def _named(specs: list[str]) -> dict[str, str]:
    from clear_rl.errors import ClearRLError

    named = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        name = name or path.rstrip("/").split("/")[-1]
        if name in named:
            raise ClearRLError(f"--model: two models are named {name!r}; label them, e.g. --model A={path}")
        named[name] = path
    return named


def check_arguments(args: argparse.Namespace) -> dict[str, str]:
    """Every path and number, before anything heavy is imported: {name: model folder}."""
    from clear_rl.commands.checks import at_least, existing_file, existing_folder, model_folder, output_folder

    models = _named(args.model)
    for name, path in models.items():
        model_folder(path, f"--model {name}", args.backbone)
    for path in args.data:
        existing_file(path, "--data", suffix=".tsv")
    inputs = {f"--model {name}": path for name, path in models.items()}
    if args.degraded is not None:
        inputs["--degraded"] = existing_folder(args.degraded, "--degraded")
    output_folder(args.out, "--out", inputs)
    for value, minimum, option in ((args.batch_size, 1, "--batch-size"), (args.max_new_tokens, 1, "--max-new-tokens"),
                                   (args.gallery, 0, "--gallery"), (args.steps, 1, "--steps")):  # fmt: skip
        at_least(value, minimum, option)
    if args.judge:  # a missing or malformed CLEAR_RL_JUDGE_* variable, before any model loads
        from clear_rl.eval.judge import JudgeConfig

        JudgeConfig.from_env()
    return models


def run(args: argparse.Namespace) -> int:
    named = check_arguments(args)
    from clear_rl.eval.runner import EvalConfig, evaluate
    from clear_rl.models.chat import OWN_PROMPT
    from clear_rl.models.io import load_unified

    models = {
        name: load_unified(path, backbone=args.backbone, preset=args.preset, tags=args.tags)
        for name, path in named.items()
    }
    config = EvalConfig(
        levels=args.levels,
        restore=args.restore,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        restoration_steps=args.steps,
        seed=args.seed,
        judge=args.judge,
        resume=args.resume,
        readback=args.readback,
        degraded_view=args.degraded_view,
        gallery=args.gallery,
        protocol=args.protocol,
        system_prompt=OWN_PROMPT if args.system_prompt is None else args.system_prompt,
        restoration_guidance=_guidance(args),
    )
    files = evaluate(models, args.data, args.out, config, degraded_dir=args.degraded)
    print((files["report.md"]).read_text(encoding="utf-8"))
    print(f"report written to {args.out}/")
    return 0


def _guidance(args: argparse.Namespace):
    """The restoration CFG of the run: off (--no-cfg), the models' presets' ("model"), or the
    preset's values with the --cfg-* flags given in their place."""
    from clear_rl.eval.runner import MODEL_GUIDANCE
    from clear_rl.models.bagel.presets import get_preset
    from clear_rl.rollout.restoration import RestorationGuidance

    if args.no_cfg:
        return None
    given = {
        "cfg_text": args.cfg_text, "cfg_img": args.cfg_img, "renorm": args.cfg_renorm,
        "interval": args.cfg_interval, "contexts": args.cfg_contexts,
    }  # fmt: skip
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return MODEL_GUIDANCE
    preset = RestorationGuidance.from_preset(get_preset(args.preset).guidance)
    return dataclasses.replace(preset, **given)
