"""SiT's default optimizer: Keras' AdamW with fused PyTorch kernels."""

import math

import keras
import numpy as np

from keras_sit.backend import fused
from keras_sit.training.ema import moving_averages
from keras_sit.validation import check_number


@keras.saving.register_keras_serializable(package="keras_sit")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, with the same arguments, variables and maths.

    On eager PyTorch the update (weight decay included) runs as one
    `torch._fused_adamw_` and the EMA (`use_ema=True`) as one
    `torch._foreach_lerp_`, where Keras makes a dozen passes over the weights
    and four ops per variable (see `keras_sit.fused`). On JAX and TensorFlow
    it is Keras' AdamW unchanged: XLA fuses the update. The state is Keras'
    own, so a saved optimizer moves between backends.

    It overrides three of Keras' private optimizer hooks and reads the Adam
    moments they manage; this class is the one place that does.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        # Keras checks the types of these (schedules, callables and tensors are its to check), not their ranges.
        for name, value, high in (
            ("learning_rate", learning_rate, math.inf),
            ("weight_decay", weight_decay, math.inf),
            ("beta_1", beta_1, 1.0),
            ("beta_2", beta_2, 1.0),
            ("epsilon", epsilon, math.inf),
        ):
            if isinstance(value, (int, float, np.integer, np.floating)):
                check_number(name, value, 0.0, high)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            **kwargs,
        )

    def _apply_weight_decay(self, variables):
        if not fused.has_fused_adamw(variables):  # else the fused update applies it
            super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not fused.has_fused_adamw(trainable_variables):
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            return
        step = int(keras.ops.convert_to_numpy(self.iterations)) + 1  # Keras counts steps from 0
        decay = self.weight_decay or 0.0
        slots = []
        for grad, variable in zip(grads, trainable_variables):
            index = self._get_variable_index(variable)
            v_max = self._velocity_hats[index].value if self.amsgrad else None
            slots.append(
                (
                    variable.value,
                    grad,
                    self._momentums[index].value,
                    self._velocities[index].value,
                    v_max,
                    bool(decay) and self._use_weight_decay(variable),
                )
            )
        # Keras: lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps); PyTorch puts eps inside the
        # bias correction, so eps / sqrt(1 - b2^t) makes the two the same.
        fused.adamw(
            slots,
            step,
            float(keras.ops.convert_to_numpy(learning_rate)),
            self.beta_1,
            self.beta_2,
            self.epsilon / math.sqrt(1.0 - self.beta_2**step),
            decay,
            self.amsgrad,
        )

    def _update_model_variables_moving_average(self, trainable_variables):
        if not fused.has_fused_adamw(trainable_variables):
            super()._update_model_variables_moving_average(trainable_variables)
            return
        pairs = moving_averages(self, trainable_variables)
        # As Keras: the first step copies the weights, later ones move by `1 - momentum`.
        first_step = int(keras.ops.convert_to_numpy(self.iterations)) == 0
        fused.lerp(
            [a.value for _, a in pairs], [v.value for v, _ in pairs], 1.0 if first_step else 1.0 - self.ema_momentum
        )
