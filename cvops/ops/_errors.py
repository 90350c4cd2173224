"""Exception types of cvops' argument errors, catchable as torchvision's too.

cvops raises ``ValueError``/``TypeError`` naming the bad argument. torchvision raises
``RuntimeError`` from its C++ checks (nms shapes, length mismatch, dtypes...) and
``AssertionError`` from its RoI boxes check, so code written for torchvision catches those.
The classes below are both at once, and :func:`call_op` is the one place that converts the
errors of the compiled ops.

Under TorchScript only the types survive that TorchScript itself produces: an error raised
by a compiled op inside scripted code reaches Python as ``RuntimeError`` (as torchvision's
do), and a Python ``raise``/``assert`` in scripted code reaches it as ``torch.jit.Error``
(whatever the class raised: torchvision's scripted ``assert`` gives the same).
"""


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value where torchvision raises ``RuntimeError``."""


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument dtype or type where torchvision raises ``RuntimeError``."""


class BoxesShapeError(ValueError, AssertionError):
    """RoI boxes of the wrong shape, where torchvision's assertion raises ``AssertionError``."""


class UnsupportedConversion(ValueError, NotImplementedError):
    """A box conversion torchvision does not implement either (``NotImplementedError``)."""


def call_op(op, *args):
    """``op(*args)`` for a compiled ``torch.ops.cvops`` op, its argument errors (the C++
    checks raise ValueError/TypeError) re-raised as :class:`ArgumentError` /
    :class:`ArgumentTypeError` with the same message. Eager mode only: TorchScript has no
    ``try``. Entering ``try`` costs nothing in CPython >= 3.11."""
    try:
        return op(*args)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None
    except TypeError as exc:
        raise ArgumentTypeError(str(exc)) from None
