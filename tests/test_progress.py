"""The one progress bar of long work (hwnas/progress.py): training the base model shows its
steps, epoch and loss; a stderr that is not a terminal gets whole lines, never carriage-return
redraws; --no-progress prints nothing."""

import io

from hwnas.config.models import BaseModelSpec, DatasetSpec, TrainSettings
from hwnas.data import load_task
from hwnas.models.build import build_model
from hwnas.progress import progress_bar
from hwnas.train import train_classifier


def test_a_stream_that_is_not_a_terminal_gets_whole_lines():
    stream = io.StringIO()
    bar = progress_bar(500, "step", "base model", stream=stream)
    for step in range(500):
        bar.set_postfix_str(f"loss {step}", refresh=False)
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # one when the work starts, one when it ends (every 30 s between: this took less)
    assert len(lines) == 2, lines
    assert lines[0].startswith("base model:   0%") and "0/500" in lines[0]
    assert lines[-1].startswith("base model: 100%") and "500/500" in lines[-1]
    assert "loss 499" in lines[-1]


def test_a_disabled_bar_prints_nothing():
    stream = io.StringIO()
    with progress_bar(10, "step", "base model", enabled=False, stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def test_training_the_base_model_shows_its_steps_epochs_and_loss(capsys):
    task = load_task(DatasetSpec(builtin="digits", validation_fraction=0.15))
    spec = BaseModelSpec(builtin="small_cnn")
    settings = TrainSettings(epochs=2, batch_size=256, learning_rate=0.003)
    model = build_model(spec, task.input_shape, task.num_classes, lambda _: None)
    train_classifier(model, task, settings, progress=True)
    err = capsys.readouterr().err
    steps = 2 * -(-len(task.train) // 256)
    last = err.strip().splitlines()[-1]
    assert "\r" not in err  # pytest's captured stderr is not a terminal
    assert last.startswith("base model: 100%") and f"{steps}/{steps}" in last, err
    assert "epoch 2/2, loss " in last
    assert float(last.rsplit("loss ", 1)[1].split(",")[0].rstrip("]")) < 2.3  # it learned
    train_classifier(model, task, settings)  # the default: no bar
    assert capsys.readouterr().err == ""
