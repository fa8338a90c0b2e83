"""Exact quantities for data `x ~ N(mu, s^2)` (per dimension) on any path: the analytic test case.

Written with `keras.ops`, so the fields can be traced inside compiled sampler loops.
"""

import numpy as np
from keras import ops


class Gaussian:
    def __init__(self, path, mu, s):
        self.path = path
        self.mu, self.s = np.asarray(mu, "float32"), np.asarray(s, "float32")

    def _coefficients(self, t):
        t = ops.reshape(ops.cast(ops.convert_to_tensor(t), "float32"), (-1, 1))
        p = self.path
        return p.alpha(t), p.beta(t), p.d_alpha(t), p.d_beta(t)

    def moments(self, t):
        a, b, _, _ = self._coefficients(t)
        mu, s = ops.convert_to_tensor(self.mu), ops.convert_to_tensor(self.s)
        return a * mu, a * a * s**2 + b * b

    def posterior(self, x, t):
        """E[x0 | x_t = x] and E[eps | x_t = x]."""
        x = ops.convert_to_tensor(x)
        a, b, _, _ = self._coefficients(t)
        mean, var = self.moments(t)
        mu, s = ops.convert_to_tensor(self.mu), ops.convert_to_tensor(self.s)
        return mu + a * s**2 * (x - mean) / var, b * (x - mean) / var

    def velocity(self, x, t):
        _, _, da, db = self._coefficients(t)
        x0, eps = self.posterior(x, t)
        return da * x0 + db * eps

    def score(self, x, t):
        mean, var = self.moments(t)
        return -(ops.convert_to_tensor(x) - mean) / var

    def noise(self, x, t):
        return self.posterior(x, t)[1]

    def transport_map(self, z):
        """Where the probability-flow ODE takes noise z at t=1 to at t=0 (paths with a(1)=0, b(1)=1)."""
        return self.mu + self.s * np.asarray(z)
