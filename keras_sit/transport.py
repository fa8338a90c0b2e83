"""The objective: what the network predicts, its training target and weight,
the time intervals, and the conversions between predictions.

Library time convention: `t = 0` is data, `t = 1` is noise, and a path gives
`x_t = a(t) x + b(t) eps` (see `keras_sit.paths`). With `a'`, `b'` the time
derivatives, everything follows from `x_t` and the velocity `v = a' x + b' eps`:

    eps    = (a v - a' x_t) / (a b' - a' b)          noise from velocity
    x_hat  = (x_t - b eps) / a                        clean-data estimate
    score  = -eps / b                                 (of the marginal of x_t)
    v      = (a'/a) x_t + (b' - a' b / a) eps         velocity from noise
    v      = (a'/a) x_t - D score,  D = b b' - (a'/a) b^2

`D >= 0` is the official `drift_var` (the diffusion matching the path). These
formulas are the official ones with both the velocity and the derivatives taken
in our time, which leaves them unchanged. The training step and
every sampler go through `to_velocity`/`to_score`/`to_noise`/`to_data`, so each
conversion exists once.
"""

import keras
from keras import ops

from keras_sit.functions import sample_interpolant_time
from keras_sit.paths import VPPath, broadcast_time, get_path
from keras_sit.validation import check_choice, check_number, keyword_defaults

PREDICTIONS = ("velocity", "score", "noise")
LOSS_WEIGHTS = (None, "velocity", "likelihood")
TIME_SAMPLERS = ("uniform", "logit_normal")


def _tensors(*values):
    return [ops.convert_to_tensor(v) for v in values]


class Transport:
    """The objective and conversions for one path and one prediction type.

    Args:
        path: a `keras_sit.Path` or a name in `keras_sit.paths.PATHS`.
        prediction: `"velocity"`, `"score"` or `"noise"`.
        loss_weight: for score/noise predictions, `None` (1), `"velocity"`
            (`(D/b)^2`) or `"likelihood"` (`D/b^2`), as upstream. Velocity
            predictions are never weighted (as upstream); asking for a weight
            with them is an error rather than silently ignored.
        train_eps, sample_eps: keep `t` this far from the ends where a
            conversion is singular. None picks the official defaults (0 for
            velocity on linear/cosine, 1e-3 otherwise; VP trains with 1e-5);
            a value you pass is always used.
        time_sampler: `"uniform"` or `"logit_normal"` (`sigmoid(N(loc, scale))`),
            mapped onto the training interval.
    """

    def __init__(
        self,
        path="linear",
        prediction="velocity",
        loss_weight=None,
        train_eps=None,
        sample_eps=None,
        time_sampler="uniform",
        time_loc=0.0,
        time_scale=1.0,
    ):
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("loss_weight", loss_weight, LOSS_WEIGHTS)
        if loss_weight is not None and prediction == "velocity":
            raise ValueError("`loss_weight` applies to score and noise predictions; velocity losses are unweighted.")
        check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
        check_number("time_loc", time_loc)
        check_number("time_scale", time_scale, low=0.0, include_low=False)
        for name, value in (("train_eps", train_eps), ("sample_eps", sample_eps)):
            if value is not None:
                check_number(name, value, 0.0, 0.5)
        self.path = get_path(path)
        # The arguments as given (None means "the official default"), for `get_config`.
        self._config = {
            "path": path if isinstance(path, str) else keras.saving.serialize_keras_object(self.path),
            "prediction": prediction,
            "loss_weight": loss_weight,
            "train_eps": train_eps,
            "sample_eps": sample_eps,
            "time_sampler": time_sampler,
            "time_loc": float(time_loc),
            "time_scale": float(time_scale),
        }
        self.prediction = prediction
        self.loss_weight = loss_weight
        self.is_vp = isinstance(self.path, VPPath)
        smooth = prediction == "velocity" and not self.is_vp
        self.train_eps = train_eps if train_eps is not None else (0.0 if smooth else 1e-5 if self.is_vp else 1e-3)
        self.sample_eps = sample_eps if sample_eps is not None else (0.0 if smooth else 1e-3)
        self.time_sampler = time_sampler
        self.time_loc = float(time_loc)
        self.time_scale = float(time_scale)

    # --- intervals ------------------------------------------------------------------------

    def interval(self, eps):
        """`[lo, hi]` in our time. VP keeps its noise end (alpha(1) > 0); others are symmetric."""
        return (eps, 1.0) if self.is_vp else (eps, 1.0 - eps)

    # --- training -------------------------------------------------------------------------

    def sample_time(self, batch_size, seed):
        """Training times `[B]` on the training interval."""
        if self.time_sampler == "logit_normal":
            u = ops.sigmoid(self.time_loc + self.time_scale * keras.random.normal((batch_size,), seed=seed))
        else:
            u = sample_interpolant_time(batch_size, seed=seed)
        lo, hi = self.interval(self.train_eps)
        return u if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * u

    def target(self, x, noise, t):
        """What the network learns to output at `x_t`."""
        x, noise, t = _tensors(x, noise, t)
        if self.prediction == "velocity":
            return self.path.velocity(x, noise, t)
        if self.prediction == "noise":
            return noise
        return -noise / self.path.beta(broadcast_time(t, noise))

    def example_weight(self, t):
        """Per-example loss weight `[B]`, or None for plain MSE.

        Score losses are taken on `b * score` (the official `sigma_t * out + x0`),
        hence the factor `b^2`; `loss_weight` multiplies in.
        """
        if self.prediction == "velocity" or (self.prediction == "noise" and self.loss_weight is None):
            return None
        t = ops.convert_to_tensor(t)
        b = self.path.beta(t)
        weight = ops.square(b) if self.prediction == "score" else ops.ones_like(t)
        if self.loss_weight == "velocity":
            return weight * ops.square(self.drift_var(t) / b)
        if self.loss_weight == "likelihood":
            return weight * self.drift_var(t) / ops.square(b)
        return weight

    # --- conversions ----------------------------------------------------------------------

    def drift_var(self, t):
        """`D(t) = b b' - (a'/a) b^2`, the official `drift_var` (>= 0)."""
        p = self.path
        t = ops.convert_to_tensor(t)
        a, b = p.alpha(t), p.beta(t)
        return b * p.d_beta(t) - p.d_alpha(t) / a * ops.square(b)

    def _coefficients(self, x, t):
        t = broadcast_time(ops.convert_to_tensor(t), x)
        p = self.path
        return p.alpha(t), p.beta(t), p.d_alpha(t), p.d_beta(t)

    def to_noise(self, output, x, t):
        """Noise estimate from the network `output` at `(x_t, t)`."""
        output, x = _tensors(output, x)
        a, b, da, db = self._coefficients(x, t)
        if self.prediction == "noise":
            return output
        if self.prediction == "score":
            return -b * output
        return (a * output - da * x) / (a * db - da * b)

    def to_velocity(self, output, x, t, clip_data=None):
        """Velocity (the probability-flow ODE drift) from the network `output`.

        `clip_data=(lo, hi)` recombines `a' clip(x_hat) + b' eps_hat` from a
        clean-data estimate clipped to the data's range. Noise and score
        predictions need it on paths with `a(1) = 0`: there
        `x_hat = (x_t - b eps_hat) / a` multiplies the network's error by
        `1 / a`, which is 1000 at `t = 0.999`.
        """
        output, x = _tensors(output, x)
        if clip_data is not None:
            _, _, da, db = self._coefficients(x, t)
            data = ops.clip(self.to_data(output, x, t), *clip_data)
            return da * data + db * self.to_noise(output, x, t)
        if self.prediction == "velocity":
            return output
        a, b, da, db = self._coefficients(x, t)
        return da / a * x + (db - da * b / a) * self.to_noise(output, x, t)

    def to_score(self, output, x, t):
        """Score of the marginal of `x_t` from the network `output`."""
        output, x = _tensors(output, x)
        if self.prediction == "score":
            return output
        _, b, _, _ = self._coefficients(x, t)
        return -self.to_noise(output, x, t) / b

    def to_data(self, output, x, t):
        """Clean-data (Tweedie) estimate `(x_t - b eps) / a`.

        From a velocity it is `(b' x_t - b v) / (a b' - a' b)`, which stays
        finite at `a = 0`.
        """
        output, x = _tensors(output, x)
        a, b, da, db = self._coefficients(x, t)
        if self.prediction == "velocity":
            return (db * x - b * output) / (a * db - da * b)
        return (x - b * self.to_noise(output, x, t)) / a

    def get_config(self):
        """The constructor's arguments as given: `Transport(**config)` rebuilds it."""
        return dict(self._config)


# The objective's arguments and their defaults, read from the signature so that
# they are declared once: `SiT` forwards these.
TRANSPORT_DEFAULTS = keyword_defaults(Transport.__init__)
