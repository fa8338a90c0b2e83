"""`SamplingSettings`: the one declaration of every sampling option, its default and its calls.

Each field declares its default, its documentation, the calls that take it
(`generate`, `encode`, `log_likelihood`) and any per-call default. The
calls build a validated, immutable, hashable settings value from their
`**options`; it is also the key of the model's cache of compiled loops.
`sampling_options` renders the declaration into the calls' signatures.
"""

import dataclasses
import inspect
import textwrap

from keras_sit.sampling.adaptive import DOPRI5_ATOL, DOPRI5_CONTROLS, DOPRI5_RTOL
from keras_sit.sampling.registry import get_sampler
from keras_sit.sampling.sde import DIFFUSIONS, LAST_STEPS
from keras_sit.validation import check_choice, check_number, check_pair, check_positive_int

GENERATE, ENCODE, LOG_LIKELIHOOD = "generate", "encode", "log_likelihood"
CALLS = (GENERATE, ENCODE, LOG_LIKELIHOOD)
_GUIDED = (GENERATE, ENCODE)  # log_likelihood scores the unguided model


def option(default, doc, calls=CALLS, **call_defaults):
    """A field of `SamplingSettings`: its default, its doc, the calls that take it, per-call defaults."""
    return dataclasses.field(default=default, metadata={"doc": doc, "calls": calls, "call_defaults": call_defaults})


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """Everything a compiled sampling loop depends on besides its tensor inputs.

    Validated on construction and immutable, so that it is also the key of
    the compiled-loop cache. `guidance_channels` is checked against the
    model's channels by the model.
    """

    sampler: str = option(
        "euler",
        "the method, a registered name (`keras_sit.sampling.sampler_names()`): ODE `'euler'`, "
        "`'midpoint'`, `'heun'`, `'rk4'`, `'ab2'` (Adams-Bashforth), `'heun-euler-last'` (Heun with an "
        "Euler last step, REPA's `--heun`), adaptive `'dopri5'` (with `atol`, "
        "`rtol`, `adaptive_control`), SDE `'sde-euler'` (Euler-Maruyama), `'sde-heun'`, and `'mean-flow'` "
        "(one call a step over the average velocity), the default of a model trained with `MeanFlow`. "
        "`encode` and `log_likelihood` take the reversible (ODE) ones.",
        log_likelihood="rk4",
    )
    num_steps: int = option(
        50,
        "solver steps; each costs the sampler's `calls_per_step` model calls (plus the SDE's last "
        "step; `'heun-euler-last'`'s last step costs one). Unused by `'dopri5'`, except that step by "
        "step it solves `num_steps` equal segments.",
    )
    cfg_scale: float = option(1.0, "classifier-free guidance scale; 1 disables guidance.", _GUIDED)
    guidance_channels: int | None = option(
        None, "guide the first this many channels only (None: all); see `guided_output`.", _GUIDED
    )
    guidance_interval: tuple | None = option(
        None, "`(lo, hi)`: guide only where `t` lies in it (None: everywhere).", _GUIDED
    )
    clip_data: tuple | None = option(
        None,
        "`(lo, hi)`, the data's range: each drift evaluation clips the clean-data estimate to it "
        "(see `Transport.to_velocity`); None uses the raw estimate.",
        (GENERATE,),
    )
    atol: float = option(DOPRI5_ATOL, "`'dopri5'`'s absolute tolerance.", _GUIDED)
    rtol: float = option(DOPRI5_RTOL, "`'dopri5'`'s relative tolerance.", _GUIDED)
    adaptive_control: str = option(
        "batch",
        "`'dopri5'`'s step-size control: `'batch'` (upstream's) shares one step size across the "
        "batch, the fewest model calls; `'example'` gives each example its own, so that it does not "
        "depend on its batch-mates.",
    )
    diffusion: str = option(
        "sigma", f"the SDE's diffusion `w(t)`, one of {DIFFUSIONS} (upstream's CLI default).", (GENERATE,)
    )
    diffusion_norm: float = option(1.0, "scale of the SDE's diffusion.", (GENERATE,))
    last_step: str | None = option("mean", f"the SDE's noiseless final step, one of {LAST_STEPS}.", (GENERATE,))
    last_step_size: float = option(0.04, "the size of the SDE's last step.", (GENERATE,))

    def __post_init__(self):
        def normalise(name, value):
            object.__setattr__(self, name, value)

        get_sampler(self.sampler)
        check_positive_int("num_steps", self.num_steps)
        normalise("num_steps", int(self.num_steps))
        normalise("cfg_scale", check_number("cfg_scale", self.cfg_scale))
        check_positive_int("guidance_channels", self.guidance_channels, allow_none=True)
        if self.guidance_interval is not None:
            normalise("guidance_interval", check_pair("guidance_interval", self.guidance_interval, 0, 1))
        if self.clip_data is not None:
            normalise("clip_data", check_pair("clip_data", self.clip_data, strict=True))
        normalise("atol", check_number("atol", self.atol, low=0.0, include_low=False))
        normalise("rtol", check_number("rtol", self.rtol, low=0.0, include_low=False))
        check_choice("adaptive_control", self.adaptive_control, DOPRI5_CONTROLS)
        check_choice("diffusion", self.diffusion, DIFFUSIONS)
        normalise("diffusion_norm", check_number("diffusion_norm", self.diffusion_norm, low=0.0))
        check_choice("last_step", self.last_step, LAST_STEPS)
        normalise("last_step_size", check_number("last_step_size", self.last_step_size, 0.0, 1.0))

    @property
    def method(self):
        """The registered `Sampler` named by `sampler`."""
        return get_sampler(self.sampler)

    @classmethod
    def for_call(cls, call, options):
        """The settings of one `call` from its keyword `options`, with the call's defaults.

        An option the call does not take raises a TypeError listing those it
        takes; `encode` and `log_likelihood` need a reversible sampler.
        """
        check_choice("call", call, CALLS)
        valid = call_options(call)
        for name in options:
            if name not in valid:
                known = name in {field.name for field in dataclasses.fields(cls)}
                reason = "does not apply to" if known else "is not an option of"
                raise TypeError(f"`{name}` {reason} `{call}`; its options are {valid}.")
        settings = cls(**{**call_defaults(call), **options})
        if call != GENERATE:
            get_sampler(settings.sampler, reversible=True)  # runs data to noise
        return settings


def call_options(call):
    """The names of the options that `call` takes, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(SamplingSettings) if call in field.metadata["calls"])


def call_defaults(call):
    """`{name: default}` of the options that `call` takes."""
    fields = (field for field in dataclasses.fields(SamplingSettings) if call in field.metadata["calls"])
    return {field.name: field.metadata["call_defaults"].get(call, field.default) for field in fields}


def sampling_options(call):
    """Decorator: show `call`'s options, with their defaults and docs, in the method's signature and docstring.

    The method takes them as `**options` and builds its settings with
    `SamplingSettings.for_call`, so that the dataclass stays the one
    declaration of each option and its default; this only renders that
    declaration for `help()` and `inspect.signature`, which would otherwise
    show a bare `**options`.
    """
    fields = {field.name: field for field in dataclasses.fields(SamplingSettings)}

    def decorate(method):
        signature = inspect.signature(method)
        parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        lines = [f"Sampling options (keyword-only, `SamplingSettings` of `{call}`):"]
        for name, default in call_defaults(call).items():
            parameters.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=fields[name].type)
            )
            text = f"{name} (default {default!r}): {fields[name].metadata['doc']}"
            lines += textwrap.wrap(text, 96, initial_indent="    ", subsequent_indent="        ")
        method.__signature__ = signature.replace(parameters=parameters)
        method.__doc__ = (method.__doc__ or "").rstrip() + "\n\n" + textwrap.indent("\n".join(lines), " " * 8) + "\n"
        return method

    return decorate
