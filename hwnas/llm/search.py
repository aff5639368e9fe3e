"""`hwnas search` of a language model (``base_model: {causal_lm: FOLDER | demo}``).

What differs from an image model's search is what is made ready before the trials (the model
loaded, the domain text tokenised into exact budgets, saliency and block influence measured
on it, the unpruned model exported and measured once) and the evaluator (hwnas/llm/trials.py).
The study, the run folder, the samplers (the engine's policy by default), the trial
pipeline, resuming and Ctrl-C are the search's own (hwnas/search).

After the trials, the models on the Pareto front are evaluated once on the held-out test
text: the perplexity and next-token accuracy a report quotes (the search selected on val).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import optuna

from hwnas import metrics
from hwnas.budgets import effective_budgets
from hwnas.config.models import DeviceProfile, SearchSpace
from hwnas.errors import ConfigError, ExportError
from hwnas.llm.trials import LlmEvaluator, LlmPrepared
from hwnas.redaction import redact
from hwnas.search.resume import FamilyRecord

if TYPE_CHECKING:
    from hwnas.run import RunFolder
    from hwnas.search.prepared import SearchOutcome

# what the agent's genai runtime measures; a latency of one inference is not among them
GENERATION_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms_p50",
                      "ttft_ms_p90", "peak_memory_mb", "model_size_mb", "energy_mj_per_token",
                      "power_mean_w", "power_peak_w")
# of the exported folder's evaluation on the val text (accuracy: an objective only)
EVALUATION_METRICS = ("accuracy", "perplexity", "mcq_accuracy")


def model_folder(space: SearchSpace, space_path: Path, root: Path | None = None) -> Path:
    """The Hugging Face folder of ``base_model.causal_lm`` (relative to ``root``: the space
    file's folder unless given), or the demo model's, converted once into the cache."""
    from hwnas.disk import cache_folder
    from hwnas.llm.source import demo_model_folder

    source = space.base_model.causal_lm
    assert source is not None
    if source == "demo":
        return demo_model_folder(cache_folder() / "models")
    folder = Path(source).expanduser()
    return folder if folder.is_absolute() else (root or Path(space_path).parent) / folder


def check_generation_devices(space: SearchSpace, space_path: Path,
                             devices: tuple[DeviceProfile, ...], paths: list[Path]) -> None:
    """Every device measures generation (runtime genai), and every objective and budget is
    a figure generation gives: refused before a run folder exists."""
    from hwnas_agent.protocol import GENAI

    from hwnas.budgets import check_power_is_measured

    for profile, path in zip(devices, paths):
        if profile.runtime.name != GENAI:
            raise ConfigError(f"device {profile.name} ({path}): a language model is measured "
                              f"generating by the agent's {GENAI} runtime; this profile "
                              f"measures with {profile.runtime.name}: set runtime: "
                              f"{{name: {GENAI}}} (device_profiles/local-genai.yaml)")
        limits = effective_budgets(space, profile).limits()
        for name in [*space.objectives[1:], *limits]:
            if name not in GENERATION_METRICS and name not in EVALUATION_METRICS:
                raise ConfigError(f"{'objectives' if name in space.objectives else 'budgets'}:"
                                  f" {name} is not measured when a language model generates; "
                                  f"allowed: {', '.join(GENERATION_METRICS)}, and of the "
                                  f"evaluation: {', '.join(EVALUATION_METRICS[1:])}")
        check_power_is_measured(space, space_path, profile, path)


def prepare(space: SearchSpace, space_path: Path, devices: tuple[DeviceProfile, ...],
            log: Callable[[str], None], torch_device: str | None = None,
            root: Path | None = None) -> LlmPrepared:
    """The model loaded, the text tokenised, saliency measured; relative paths of the space
    resolve against ``root`` (the space file's folder unless given)."""
    import torch

    from hwnas.config.text import LanguageDataSpec
    from hwnas.knobs import ModelParts, registered
    from hwnas.llm.saliency import measure_saliency
    from hwnas.llm.source import load_causal_lm
    from hwnas.llm.text import language_data
    from hwnas.llm.text_config import with_base
    from hwnas.space import check_enqueued, space_shape
    from hwnas.torch_device import resolve

    accelerator = resolve(torch_device)
    root = root or Path(space_path).parent
    folder = model_folder(space, space_path, root)
    started = time.perf_counter()
    base = load_causal_lm(folder)
    spec: LanguageDataSpec = with_base(space.dataset.language(), root)
    data = language_data(spec, base.tokenizer)
    parameters = sum(p.numel() for p in base.model.parameters()) / 1e6
    log(f"base model: {base.family} from {folder} ({parameters:.1f} M parameters, "
        f"{base.config.num_hidden_layers} layers)")
    log("text: " + "; ".join(u for u in data.report.lines()[1:] if "sha256" not in u))
    saliency = measure_saliency(base.model, torch.from_numpy(data.saliency), device=accelerator)
    log(f"saliency and block influence measured on {saliency.tokens} tokens on {accelerator} "
        f"({time.perf_counter() - started:.0f} s with loading)")
    parts = ModelParts(base.model, {}, 0, 1)
    units = {knob.name: list(knob.units(knob.settings(space.knobs), parts))
             for knob in registered("causal_lm") if knob.settings(space.knobs) is not None}
    shape = space_shape(space, devices[0], units)
    check_enqueued(space, shape)  # an off-grid or unknown parameter, named
    drop_order = tuple(saliency.layer_drop_order())
    return LlmPrepared(space, devices[0], devices, effective_budgets(space, devices[0]), base,
                       data, saliency, drop_order, shape, str(accelerator))


def run_llm_search(space_path: Path, paths: list[Path], space: SearchSpace, space_text: str,
                   run_dir: Path | None, n_trials: int | None, progress: bool,
                   log: Callable[[str], None], fork: bool,
                   torch_device: str | None = None, worker: bool = False,
                   files_root: Path | None = None) -> "SearchOutcome":
    """Called by hwnas.search.study.run_search for a causal_lm space (its checks done; the
    storage, study name and artifact store of the command line in ``space.search``). A
    ``worker`` joins a study another `hwnas search` made, on its model and text (shared.py:
    relative paths resolve against the folder the study recorded, or ``files_root``)."""
    from hwnas.config.load import load_device_profile
    from hwnas.llm.shared import LanguageSources, check_model_folder, check_text
    from hwnas.logs import run_log
    from hwnas.run import RunFolder
    from hwnas.run_lock import writer_lock
    from hwnas.search.optimize import optimize
    from hwnas.search.resume import fork_in_use, guard_resume, refuse_changed
    from hwnas.search.opening import SEARCH_ADVICE, WORKER_ADVICE, open_study, with_trials
    from hwnas.search.shared import existing_study, refuse_other_space

    devices = tuple(load_device_profile(p) for p in paths)
    check_generation_devices(space, space_path, devices, paths)
    with_trials(space, n_trials)  # --trials 0: refused before a run folder exists
    run = RunFolder.locate(space, devices[0], run_dir)
    with writer_lock(run.path, f"hwnas {'worker' if worker else 'search'}",
                     WORKER_ADVICE if worker else SEARCH_ADVICE), run_log(run.log_path):
        if not fork:
            refuse_changed(run, space_path, paths)
        # the study this folder goes on in (after a --fork, the fork: its files were recorded)
        joined = existing_study(fork_in_use(run))
        if worker and (joined is None or joined[1].search_space_yaml is None):
            raise ConfigError(f"no hwnas study {run.study_name!r} in {redact(run.storage_url)}:"
                              f" start it with `hwnas search SPACE.yaml --storage URL` first")
        recorded = None
        if joined is not None:
            if run.current_config() is None:  # joining from another run folder or machine
                refuse_other_space(joined[0], joined[1], space_text)
            # a fork of a changed space records its files afresh
            recorded = None if fork and run.current_config() is not None else \
                LanguageSources.of_study(joined[0])
            if worker:
                n_trials = n_trials or joined[1].n_trials
        space = with_trials(space, n_trials)
        root = (files_root or (Path(recorded.root) if worker and recorded else
                               Path(space_path).parent)).resolve()
        if recorded is not None:  # before the model loads: a wrong folder costs nothing
            check_model_folder(run.study_name, recorded, model_folder(space, space_path, root))
        prepared = prepare(space, space_path, devices, log, torch_device, root)
        if recorded is not None:
            check_text(run.study_name, recorded, prepared.data.report.files)
        run = guard_resume(run, prepared.space, prepared.shape, prepared.budgets, space_path,
                           paths, fork, log, LLM_RECORD)
        config_version = run.record_configs(space_path, paths)
        study = open_study(run, space, log, worker)
        if not worker:
            _write_study_record(prepared, study, space_text, config_version, run, root)
        outcome = optimize(prepared, run, study, config_version, progress, log,  # type: ignore[arg-type]
                           evaluator_of=lambda pool: LlmEvaluator(prepared, pool, run,
                                                                  config_version))
        if worker:
            log("the front is evaluated on the test text by the study's `hwnas search` (its "
                "primary), once every trial has ended")
        else:
            wait_for_other_controllers(study, log)
            evaluate_front(prepared, run, study, log)
        return outcome


def wait_for_other_controllers(study: optuna.Study, log: Callable[[str], None],
                               poll_s: float = 2.0, patience_s: float = 1800.0,
                               every_s: float = 60.0) -> None:
    """Until no trial of the study is RUNNING (the workers' last trials may end on the front;
    a worker that died is failed by its heartbeat or its host: controllers.py), said every
    minute; after ``patience_s`` the front is evaluated as it stands, and saying so."""
    from hwnas.search.controllers import fail_abandoned_trials

    started, said = time.monotonic(), float("-inf")
    while True:
        fail_abandoned_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        now = time.monotonic()
        numbers = [t.number for t in running]
        if now - started > patience_s:
            log(f"trials {numbers} of other controllers still run after {patience_s / 60:.0f} "
                f"min: the front is evaluated on the test text as it stands; run this command "
                f"again once they end to evaluate what they add")
            return
        if now - said >= every_s:
            log(f"waiting for trials {numbers} of other controllers to end before the front is "
                f"evaluated on the test text ({now - started:.0f} s so far)")
            said = now
        time.sleep(poll_s)


def _llm_figures(attributes: Mapping[str, Any]) -> Mapping[str, float]:
    from hwnas.llm.trials import evaluated_figures

    return evaluated_figures(attributes.get("llm") or {})


# what a fork carries into its copies of language trials (hwnas/search/resume.py)
LLM_RECORD = FamilyRecord(("llm",), _llm_figures)


def _write_study_record(prepared: LlmPrepared, study: optuna.Study, space_text: str,
                        config_version: str, run: "RunFolder", root: Path) -> None:
    from hwnas.llm.shared import LanguageSources, model_files
    from hwnas.records import StudyRecord
    from hwnas.torch_device import describe

    record = StudyRecord(
        tuple(sorted(prepared.budgets.limits().items())), prepared.base.weights_sha256,
        float("nan"), (prepared.space.dataset.sequence_length,),
        {"tokenizer": "the model folder's tokenizer.json", "family": "causal_lm"},
        tuple(prepared.space.objectives), prepared.budgets.basis,
        search_space_yaml=space_text, config_version=config_version,
        n_trials=prepared.space.search.n_trials, torch_device=describe(prepared.torch_device),
        floors=tuple(name for name in prepared.budgets.limits()
                     if metrics.find(name) is not None and metrics.get(name).higher_is_better),
        artifact_store=redact(run.store_url))
    record.write(study)
    study.set_user_attr("model_family", "causal_lm")
    study.set_user_attr("llm_data", prepared.data.report.as_dict())
    folder = Path(prepared.base.folder).resolve()
    LanguageSources(str(root), str(folder), model_files(folder),
                    prepared.data.report.files).write(study)


def evaluate_front(prepared: LlmPrepared, run: "RunFolder", study: optuna.Study,
                   log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """The front's models on the held-out test text, once each: trial number -> figures,
    kept in the study's ``llm_test`` attribute (the search selected on val)."""
    from hwnas.llm.evaluate import evaluate_folder
    from hwnas.llm.shared import kept_folder
    from hwnas.pareto import pareto_front, study_directions
    from hwnas.run import outcomes

    tested = dict(study.user_attrs.get("llm_test") or {})
    # the front the report shows (hwnas/pareto.py): feasible, evaluated, one per folder
    for outcome in pareto_front(outcomes(study), study_directions(study)):
        trial = study.trials[outcome.number]
        llm = trial.user_attrs.get("llm") or {}
        if str(trial.number) in tested or not llm.get("folder"):
            continue
        try:  # a worker's folder comes from the study's artifact store
            folder = kept_folder(run, study, trial.number)
        except ExportError as error:
            log(f"trial {trial.number} is on the front, but not evaluated on the test text: "
                f"{error}")
            continue
        result = evaluate_folder(folder, prepared.data.evaluation).perplexity
        tested[str(trial.number)] = {"perplexity": result.perplexity,
                                     "next_token_accuracy": result.top1_accuracy,
                                     "tokens": result.tokens}
        tested[str(trial.number)]["generation"] = generate(folder, PROMPT, GENERATED)
        study.set_user_attr("llm_test", tested)
        log(f"trial {trial.number} on the test text: perplexity {result.perplexity:.3f}, "
            f"next-token accuracy {result.top1_accuracy:.4f} ({folder})")
    return tested


# the fixed prompt every front model continues in the report (greedy: reproducible)
PROMPT = "The for statement in Python"
GENERATED = 32


def generate(folder: Path, prompt: str, tokens: int) -> str:
    """``tokens`` greedy tokens after ``prompt`` by onnxruntime-genai from the folder."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return tokenizer.decode(generator.get_sequence(0))
