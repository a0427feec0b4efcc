"""Refuse answers whose numbers are too big to evaluate, before anything is evaluated.

math-verify parses LaTeX into *unevaluated* sympy trees (``\\binom{10^8}{5 \\cdot 10^7}`` is
``binomial(Pow(10, 8), Mul(5, Pow(10, 7)))``, nothing computed yet); ``verify`` then evaluates
them, and a policy can write answers whose evaluation runs for minutes: huge binomials,
factorials and gamma arguments, powers such as ``99999999999^{99999}``, towers, products over
a million terms, sines of ``10^{3000}``, ``(x+1)^{1000}`` expanded. A timeout catches them,
but each costs a full time bound and a killed worker. This module walks the parsed tree and
estimates the size (``log10 |value|``) of every number in it with float arithmetic, never
building the number, and names the first one over a limit. The verifier then judges that
answer wrong without evaluating it (unless it is the same string as the gold answer).

The limits are far beyond what a math answer needs; near them a check took tens of ms of CPU
here, over them seconds to hours (sympy 1.14, math-verify 0.9). What they let through is
still cut off by the time bound.
Runs in the verifier worker (it imports sympy); see ``coldstart.common.verifier``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import sympy

MAX_DIGITS = 1000.0
"""No number may have more digits than this (``2^{3321}`` passes, ``2^{3322}`` does not):
exact arithmetic on a few thousand digits takes milliseconds, on millions it takes minutes."""

MAX_FUNCTION_ARG_DIGITS = 100.0
"""Arguments of functions evaluated in floating point (``\\sin``, ``\\log``, roots, floor) and
bases of non-integer powers: their cost grows with the precision the argument needs
(``\\sin(10^{3000})`` ran past 5 s)."""

MAX_OTHER_FUNCTION_ARG = 1000.0
"""Numeric arguments of any other function (special, number-theoretic, combinatorial with a
symbol in it) stay at or below this value: their cost is unknown here, so keep them small."""

MAX_SYMBOLIC_EXPONENT = 100.0
"""Powers of expressions with symbols: simplifying ``(x+1)^{k}`` against an expanded form
expands it (``k = 1000`` ran past 5 s, ``k = 100`` took 0.3 s)."""

MAX_SERIES_TERMS = 100.0
"""Terms of a sum or product with numeric bounds (``\\sum_{k=1}^{10^4} 1/k`` ran past 5 s)."""

_LN10 = math.log(10)
_LOG10_2 = math.log10(2)


class Size(NamedTuple):
    """How big a numeric subexpression is: ``digits`` = log10 of its absolute value (-inf for
    0), ``value`` = the value itself when a float holds it (complex results have none)."""

    digits: float
    value: float | None


class TooBig(Exception):
    """A number in the answer is over a limit; the message says which and why."""


def too_big_reason(parsed: Iterable[object]) -> str | None:
    """Why evaluating one of ``parsed`` (math-verify's ``parse`` output: sympy trees and
    strings) could take unbounded time, or None when every number in them is within bounds.

    >>> from sympy import Integer, Pow, Symbol, factorial
    >>> too_big_reason([factorial(Pow(Integer(10), Integer(9), evaluate=False))])
    'factorial of 1e+09 has about 8.57e+09 digits (limit 1000)'
    >>> too_big_reason([Pow(Symbol("x"), Integer(2)), "x^2"]) is None
    True
    """
    try:
        for item in parsed:
            if isinstance(item, sympy.Basic):
                size_of(item)
    except TooBig as exc:
        return str(exc)
    return None


def size_of(expr: sympy.Basic) -> Size | None:
    """The size of ``expr`` if it is a number (None when it has symbols or is not numeric).

    Raises TooBig when a number in it, or one evaluating it would build, is over a limit.
    """
    if isinstance(expr, (sympy.Number, sympy.NumberSymbol)):
        return _number(expr)
    rule = _RULES.get(type(expr))
    if rule is None:
        rule = next((r for cls, r in _BASE_RULES if isinstance(expr, cls)), _other)
    return rule(expr)


def _number(expr: sympy.Basic) -> Size | None:
    if isinstance(expr, sympy.Integer):
        digits = _check_digits(_int_digits(expr.p), "an integer")
        return _size(float(expr.p) if digits < 300 else None, digits)
    if isinstance(expr, sympy.Rational):
        _check_digits(max(_int_digits(expr.p), _int_digits(expr.q)), "a fraction's term")
        digits = _int_digits(expr.p) - _int_digits(expr.q)
        return _size(expr.p / expr.q if abs(digits) < 300 else None, digits)
    if isinstance(expr, sympy.Float):
        _sign, mantissa, exponent, bits = expr._mpf_  # no float(): it could overflow
        digits = _check_digits((exponent + bits) * _LOG10_2 if mantissa else -math.inf, "a number")
        return _size(float(expr) if abs(digits) < 300 else None, digits)
    if expr.is_finite and expr.is_real:  # pi, E, golden ratio
        return _size(float(expr))
    return None  # I, infinities, nan: no size to bound


def _int_digits(n: int) -> float:
    return math.log10(abs(n)) if n else -math.inf


def _size(value: float | None, digits: float | None = None) -> Size:
    if digits is None:
        digits = math.log10(abs(value)) if value else -math.inf
    return Size(digits, value)


def _check_digits(digits: float, what: str) -> float:
    """``digits`` if within MAX_DIGITS either way (10^-2000 is as costly as 10^2000; 0 is fine)."""
    if digits != -math.inf and abs(digits) > MAX_DIGITS:
        raise TooBig(f"{what} has about {digits:.3g} digits (limit {MAX_DIGITS:.0f})")
    return digits


def _sizes(args: Iterable[sympy.Basic]) -> list[Size | None]:
    return [size_of(arg) for arg in args]  # every argument is checked, symbolic or not


def _value(size: Size, what: str) -> float | None:
    """The value of a number used as an exponent, a factorial's n, a bound: TooBig when it is
    too big for a float (such an exponent or n is far over every limit), None when complex."""
    if size.value is None and size.digits > 300:
        raise TooBig(f"{what} is about 10^{size.digits:.3g}")
    return size.value


# --------------------------------------------------------------------------- arithmetic


def _add(expr: sympy.Basic) -> Size | None:
    sizes = _sizes(expr.args)
    if any(s is None for s in sizes):
        return None
    values = [s.value for s in sizes]
    if all(v is not None for v in values):
        return _size(math.fsum(values))
    return _size(None, max(s.digits for s in sizes) + math.log10(len(sizes)))


def _mul(expr: sympy.Basic) -> Size | None:
    sizes = _sizes(expr.args)
    if any(s is None for s in sizes):
        return None
    if any(s.digits == -math.inf for s in sizes):
        return _size(0.0)
    digits = _check_digits(sum(s.digits for s in sizes), "a product")
    values = [s.value for s in sizes]
    known = abs(digits) < 300 and all(v is not None for v in values)
    return _size(math.prod(values) if known else None, digits)


def _pow(expr: sympy.Basic) -> Size | None:
    base, exponent = _sizes(expr.args)
    if exponent is None:
        return None
    power = _value(exponent, "an exponent")
    if power is None:
        return None
    if base is None:
        if abs(power) > MAX_SYMBOLIC_EXPONENT:
            raise TooBig(
                f"an expression with symbols to the power {power:.3g} "
                f"(limit {MAX_SYMBOLIC_EXPONENT:.0f})"
            )
        return None
    return _power(base, power)


def _exp(expr: sympy.Basic) -> Size | None:
    (exponent,) = _sizes(expr.args)
    power = None if exponent is None else _value(exponent, "an exponent")
    return None if power is None else _power(_size(math.e), power)


def _power(base: Size, power: float) -> Size:
    if base.digits == -math.inf:  # 0^p
        return _size(0.0 if power > 0 else None, -math.inf if power > 0 else 0.0)
    if power != int(power) and abs(base.digits) > MAX_FUNCTION_ARG_DIGITS:
        raise TooBig(f"a non-integer power of a {base.digits:.3g}-digit number")
    digits = _check_digits(power * base.digits, "a power")
    value = None
    if abs(digits) < 300 and base.value is not None:
        result = base.value**power  # complex for negative bases and fractional powers
        value = result if isinstance(result, float) else None
    return _size(value, digits)


# --------------------------------------------------------------------------- combinatorics


def _log10_gamma(x: float) -> float:
    """log10 |Gamma(x)|, or -inf at its poles (0, -1, ...: sympy says zoo, cheaply)."""
    if x <= 0 and x == int(x):
        return -math.inf
    return math.lgamma(x) / _LN10


def _gamma_like(expr: sympy.Basic, shift: float, scale: float, what: str) -> Size | None:
    """Gamma(x + shift) ** scale: factorial(n) = Gamma(n + 1), gamma(x), factorial2 ~ n!^(1/2)."""
    (arg,) = _sizes(expr.args)
    x = None if arg is None else _value(arg, f"the argument of {what}")
    if x is None:
        return None
    digits = _check_digits(_log10_gamma(x + shift) * scale, f"{what} of {x:.3g}")
    return _estimate(digits)


def _estimate(digits: float) -> Size:
    """A positive number of about ``digits`` digits (a magnitude is all the limits need)."""
    return _size(10.0**digits if digits < 300 else None, digits)


def _binomial(expr: sympy.Basic) -> Size | None:
    n_size, k_size = _sizes(expr.args)
    if n_size is not None and k_size is not None:
        n, k = _value(n_size, "a binomial's n"), _value(k_size, "a binomial's k")
        if n is not None and k is not None and n == int(n) and k == int(k) and 0 <= k <= n:
            digits = _log10_gamma(n + 1) - _log10_gamma(k + 1) - _log10_gamma(n - k + 1)
            return _estimate(_check_digits(digits, f"binomial({n:.3g}, {k:.3g})"))
    _small_args([n_size, k_size], "binomial")
    return None


def _small_args(sizes: list[Size | None], name: str) -> None:
    for size in sizes:
        if size is not None and (size.value is None or abs(size.value) > MAX_OTHER_FUNCTION_ARG):
            raise TooBig(
                f"{name} of a number over {MAX_OTHER_FUNCTION_ARG:.0f} (about 10^{size.digits:.3g})"
            )


def _series(expr: sympy.Basic) -> Size | None:
    """Sum / Product: the number of terms between numeric bounds is limited."""
    size_of(expr.function)
    for limit in expr.limits:
        bounds = _sizes(limit[1:])
        values = [None if b is None else _value(b, "a bound of a sum or product") for b in bounds]
        if len(values) == 2 and None not in values:
            low, high = values
            if abs(high - low) > MAX_SERIES_TERMS:
                raise TooBig(
                    f"a sum or product over {abs(high - low) + 1:.3g} terms "
                    f"(limit {MAX_SERIES_TERMS:.0f})"
                )
    return None


# --------------------------------------------------------------------------- functions

_FLOAT_FUNCTIONS: dict[type, Callable[..., float]] = {
    sympy.sin: math.sin, sympy.cos: math.cos, sympy.tan: math.tan,
    sympy.asin: math.asin, sympy.acos: math.acos, sympy.atan: math.atan,
    sympy.sinh: math.sinh, sympy.cosh: math.cosh, sympy.tanh: math.tanh,
    sympy.log: math.log, sympy.Abs: abs, sympy.floor: math.floor, sympy.ceiling: math.ceil,
    sympy.Max: max, sympy.Min: min,
}  # fmt: skip
"""Functions evaluated in floating point, with the float function that estimates their value."""


def _float_function(expr: sympy.Basic) -> Size | None:
    sizes = _sizes(expr.args)
    for size in sizes:
        if (
            size is not None
            and size.digits != -math.inf
            and abs(size.digits) > MAX_FUNCTION_ARG_DIGITS
        ):
            raise TooBig(
                f"{type(expr).__name__} of a {size.digits:.3g}-digit number "
                f"(limit {MAX_FUNCTION_ARG_DIGITS:.0f})"
            )
    values = [s.value if s is not None else None for s in sizes]
    if any(v is None for v in values):
        return None
    try:
        result = _FLOAT_FUNCTIONS[type(expr)](*values)
    except OverflowError:
        raise TooBig(f"{type(expr).__name__} of {values} overflows a float") from None
    except ValueError:  # outside the real domain (log(-1), asin(2)): complex, small
        return None
    return _size(float(result))


def _other(expr: sympy.Basic) -> Size | None:
    """Anything else: check every argument; a function's numeric arguments must be small."""
    sizes = _sizes(expr.args)
    if isinstance(expr, sympy.Function):
        _small_args(sizes, type(expr).__name__)
    return None


_RULES: dict[type, Callable[[sympy.Basic], Size | None]] = {
    sympy.Add: _add,
    sympy.Mul: _mul,
    sympy.Pow: _pow,
    sympy.exp: _exp,
    sympy.factorial: lambda e: _gamma_like(e, 1.0, 1.0, "factorial"),
    sympy.factorial2: lambda e: _gamma_like(e, 1.0, 0.5, "double factorial"),
    sympy.subfactorial: lambda e: _gamma_like(e, 1.0, 1.0, "subfactorial"),
    sympy.gamma: lambda e: _gamma_like(e, 0.0, 1.0, "gamma"),
    sympy.binomial: _binomial,
    sympy.Sum: _series,
    sympy.Product: _series,
    **dict.fromkeys(_FLOAT_FUNCTIONS, _float_function),
}
_BASE_RULES: list[tuple[type, Callable[[sympy.Basic], Size | None]]] = [
    (sympy.Symbol, lambda e: None),
]
