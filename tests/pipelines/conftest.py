"""Pipelines compiled in these tests use a fixed image tag: `compile` and `submit` refuse the
unset (= latest) default (pipelines/compile.py); tests about that refusal clear the variable."""

import pytest

TEST_IMAGE_TAG = "test-0123456789ab"


@pytest.fixture(autouse=True)
def _image_tag(monkeypatch):
    monkeypatch.setenv("COLDSTART_IMAGE_TAG", TEST_IMAGE_TAG)
