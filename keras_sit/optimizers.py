"""SiT's default optimizer: Keras' AdamW with fused PyTorch kernels."""

import keras

from keras_sit import backend


@keras.saving.register_keras_serializable(package="keras_sit")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, with the same arguments, variables and maths.

    On PyTorch, eager, the update (weight decay included) runs as one fused
    kernel and the EMA (`use_ema=True`) as one `torch._foreach_lerp_`, where
    Keras makes a dozen passes over the weights and four ops a variable
    (`backend.fused_adamw_update` has the figures). On JAX and TensorFlow it
    is Keras' AdamW unchanged: XLA fuses the update. Optimizer states move
    between backends with a saved model.
    """

    def _apply_weight_decay(self, variables):
        if not backend.has_fused_adamw(variables):  # else the fused update applies it
            super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if backend.has_fused_adamw(trainable_variables):
            backend.fused_adamw_update(self, grads, trainable_variables, learning_rate)
        else:
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _update_model_variables_moving_average(self, trainable_variables):
        if backend.has_fused_adamw(trainable_variables):
            backend.lerp_moving_average(self, trainable_variables)
        else:
            super()._update_model_variables_moving_average(trainable_variables)
