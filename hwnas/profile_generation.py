"""`hwnas profile FOLDER...`: onnxruntime-genai model folders measured generating, side by side.

A folder (genai_config.json, the decoder's ONNX and its external data, the tokenizer) travels
to the agent as one model of several files, every file verified by its sha256, and the agent's
``genai`` runtime measures generation rounds: a prompt of ``prompt_tokens``, then
``generate_tokens`` greedy tokens (the device profile's ``measurement`` section). The profile
must name ``runtime: {name: genai}``; folders and ONNX files are not mixed in one table (their
figures are of different kinds: per generated token vs per inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hwnas.errors import ConfigError

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile
    from hwnas.measurement import Measurement
    from hwnas.records import Artifact


def decoder_file(folder: Path) -> str:
    """The decoder ONNX a genai folder's config names (relative to the folder)."""
    from hwnas.llm.evaluate import read_decoder_spec

    if not (folder / "genai_config.json").is_file():
        raise ConfigError(f"{folder}: a folder without genai_config.json; hwnas profile measures "
                          f"ONNX files and onnxruntime-genai model folders")
    return read_decoder_spec(folder).onnx.relative_to(folder).as_posix()


def profile_folders(paths: Sequence[Path], profile: "DeviceProfile", precisions: Sequence[str],
                    shapes: Sequence[Any]) -> list[tuple[str, "Artifact", "Measurement"]]:
    """(folder name, its artifact: manifest sha256 and total bytes, measurement) per folder."""
    from hwnas_agent.protocol import GENAI

    from hwnas.records import Artifact
    from hwnas.remote.device import open_device

    if profile.runtime.name != GENAI:
        raise ConfigError(f"{paths[0]} is a model folder, measured generating by the agent's "
                          f"{GENAI} runtime; device {profile.name} measures with "
                          f"{profile.runtime.name}: use a profile with runtime: {{name: {GENAI}}}")
    if precisions or shapes:
        raise ConfigError("--precision and --input-shape apply to ONNX files; export a language "
                          "model at each precision with hwnas.llm.export (PrecisionPlan)")
    files = [(Path(path), decoder_file(Path(path))) for path in paths]
    rows = []
    with open_device(profile) as client:
        for folder, model in files:
            sha256 = client.ensure_files(folder, model)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            measurement = client.measure(profile.measure_request(sha256))
            artifact = Artifact("", sha256, size, (), 0)
            rows.append((folder.name, artifact, measurement))
    return rows


def generation_table(result: Any, device: str) -> str:
    """Time to first token and tokens/s, side by side; decode also as a ratio of the first."""
    header = ["model", "MB", "TTFT p50 ms", "TTFT p90 ms", "prefill tok/s", "decode tok/s",
              "95% CI", "CV", "vs first", "peak MB"]
    first = result.rows[0].measurement
    lines = []
    for row in result.rows:
        m = row.measurement
        low, high = m.decode_tokens_per_s_ci95 or (float("nan"), float("nan"))
        lines.append([row.model, f"{row.artifact.size_mb:.1f}", f"{m.ttft_ms_p50:.1f}",
                      f"{m.ttft_ms_p90:.1f}", f"{m.prefill_tokens_per_s:.1f}",
                      f"{m.decode_tokens_per_s:.1f}", f"{low:.1f}-{high:.1f}",
                      f"{m.decode_cv:.3f}", f"x{m.decode_tokens_per_s / first.decode_tokens_per_s:.2f}",
                      "" if m.peak_memory_mb is None else f"{m.peak_memory_mb:.0f}"])
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    text = [f"on {device} ({', '.join(first.execution_providers)}), prompt "
            f"{first.prompt_tokens} tokens, then {first.generate_tokens} greedy tokens, batch 1:"]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header, ["-" * w for w in widths], *lines]]
    return "\n".join(text)


def is_generation(result: Any) -> bool:
    return bool(result.rows) and result.rows[0].measurement.decode_tokens_per_s is not None

