"""A bad batch in streamed data never reaches the weights (`keras_sit.training.step_guard`)."""

import keras
import numpy as np
import pytest

import keras_sit
from tests.conftest import randomize, tiny_sit, to_numpy

NUM_CLASSES = 3


class Batches(keras.utils.PyDataset):
    """Streamed data: `fit` sees its values only batch by batch."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def good_batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((4, 4, 4, 2)).astype("float32"), rng.integers(0, NUM_CLASSES, 4).astype("int32"))
        for _ in range(count)
    ]


def spoil(batch, kind):
    x, labels = batch[0].copy(), batch[1].copy()
    if kind == "nan":
        x[1, 2, 0, 1] = np.nan
    elif kind == "inf":
        x[0, 0, 3, 0] = -np.inf
    elif kind == "label_too_high":
        labels[2] = NUM_CLASSES
    elif kind == "label_negative":
        labels[0] = -1
    return x, labels


def compiled_model(jit_compile, **compile_kwargs):
    model = tiny_sit(num_classes=NUM_CLASSES, depth=1)
    model.compile(jit_compile=jit_compile, **compile_kwargs)
    return model


def state(model):
    return [to_numpy(v) for v in model.weights + model.optimizer.variables]


def assert_same_state(model, reference):
    for got, want in zip(state(model), state(reference), strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


MESSAGES = {
    "nan": "its loss is NaN or Inf",
    "inf": "its loss is NaN or Inf",
    "label_too_high": r"its labels are not all in \[0, num_classes\)",
    "label_negative": r"its labels are not all in \[0, num_classes\)",
}


@pytest.mark.parametrize(
    "kind, jit_compile",
    [("nan", True), ("inf", False), ("label_too_high", False), ("label_negative", True)],
)
def test_a_bad_batch_mid_fit_is_not_applied_and_fit_stops_naming_it(kind, jit_compile):
    batches = good_batches(4)
    batches[2] = spoil(batches[2], kind)
    model = compiled_model(jit_compile)
    with pytest.raises(ValueError, match=rf"`fit` stopped at training step 3 of this call: {MESSAGES[kind]}"):
        model.fit(Batches(batches), epochs=1, verbose=0, shuffle=False)
    # The same noise needs the same compilation on TensorFlow only (XLA draws other numbers there);
    # elsewhere the reference trains uncompiled-or-not as Keras chooses, sparing a second torch.compile.
    before_the_bad_batch = compiled_model(jit_compile if keras.backend.backend() == "tensorflow" else "auto")
    before_the_bad_batch.fit(Batches(batches[:2]), epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations) == 2
    assert_same_state(model, before_the_bad_batch)

    # Fixed data: the next `fit` trains on from the last good state.
    model.fit(Batches(good_batches(1, seed=1)), epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 3
    assert all(np.all(np.isfinite(v)) for v in state(model))


class KeepTraining(keras.callbacks.Callback):
    """Undoes the stop, so that the steps after a bad one run (as within one `steps_per_execution`)."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.stop_training = False


def test_no_step_after_a_bad_one_is_applied():
    batches = good_batches(4)
    batches[1] = spoil(batches[1], "nan")
    model = compiled_model("auto")
    with pytest.raises(ValueError, match="training step 2 of this call"):
        model.fit(Batches(batches), epochs=1, verbose=0, shuffle=False, callbacks=[KeepTraining()])
    before_the_bad_batch = compiled_model("auto")
    before_the_bad_batch.fit(Batches(batches[:1]), epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations) == 1
    assert_same_state(model, before_the_bad_batch)


class PoisonedGradients(keras_sit.objectives.Objective):
    """A finite term whose gradients are NaN where the batch's `poison` is 1: `sqrt(0 * |pred|^2 + 1 - poison)`."""

    extra_inputs = ("poison",)

    def term(self, batch, forward, training=False):
        poison = keras.ops.mean(keras.ops.cast(batch["poison"], "float32"))
        return keras.ops.sqrt(0.0 * keras.ops.sum(keras.ops.square(forward["pred"])) + 1.0 - poison)


def test_non_finite_gradients_are_not_applied_and_finite_ones_are():
    model = tiny_sit(num_classes=NUM_CLASSES, depth=1, objectives=[PoisonedGradients(name="poisoned")])
    randomize(model, np.random.default_rng(0))  # every weight gets a gradient
    model.compile(jit_compile="auto", use_ema=True)
    model.optimizer.build(model.trainable_variables)
    before = state(model)
    x, labels = good_batches(1)[0]
    with pytest.raises(ValueError, match="the batch is bad, so it was not applied: its gradients hold NaN or Inf"):
        model.train_on_batch({"x": x, "poison": np.ones(len(x), "float32")}, labels)
    assert int(model.optimizer.iterations) == 0
    for got, want in zip(state(model), before, strict=True):
        np.testing.assert_array_equal(got, want)

    model.train_on_batch({"x": x, "poison": np.zeros(len(x), "float32")}, labels)
    assert int(model.optimizer.iterations) == 1
    changed = [not np.array_equal(got, want) for got, want in zip(state(model), before, strict=True)]
    assert sum(changed) > len(model.trainable_variables)  # the weights, and the slots and EMA beside them


def test_evaluate_names_a_bad_streamed_batch():
    batches = good_batches(3)
    batches[1] = spoil(batches[1], "label_too_high")
    model = compiled_model("auto")
    with pytest.raises(ValueError, match=r"`evaluate`: batch 2 is bad: its labels are not all in \[0, num_classes\)"):
        model.evaluate(Batches(batches), verbose=0)
    assert np.isfinite(model.evaluate(Batches(good_batches(2)), verbose=0))


def test_good_training_is_unchanged_by_the_guard():
    batches = good_batches(3)
    guarded = compiled_model("auto")
    guarded.fit(Batches(batches), epochs=2, verbose=0, shuffle=False)
    unguarded = KerasStepSiT(**tiny_sit(num_classes=NUM_CLASSES, depth=1).get_config())
    unguarded.compile(jit_compile="auto")
    unguarded.fit(Batches(batches), epochs=2, verbose=0, shuffle=False)
    assert int(guarded.optimizer.iterations) == 6
    assert_same_state(guarded, unguarded)


class KerasStepSiT(keras_sit.SiT):
    """SiT trained by Keras' own train step, without the guard."""

    def train_step(self, *args):
        return keras.Model.train_step(self, *args[:-1], self._labels_into_x(args[-1]))


def test_train_on_batch_refuses_a_bad_batch_and_takes_the_next_good_one():
    good, bad = good_batches(2)
    model = compiled_model("auto")
    with pytest.raises(ValueError, match=r"`train_on_batch`: the batch is bad, so it was not applied: its labels"):
        model.train_on_batch(*spoil(bad, "label_negative"))
    assert int(model.optimizer.iterations) == 0
    assert np.isfinite(model.train_on_batch(*good))
    assert int(model.optimizer.iterations) == 1
