"""The examples in the eval and distillation docstrings run."""

import doctest

import pytest

from coldstart.data_prep import distill
from coldstart.eval import benchmarks, reflection
from coldstart.eval.official import mathverse, mathvision, mathvista, wemath

MODULES = [benchmarks, reflection, mathvista, mathverse, mathvision, wemath, distill]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
