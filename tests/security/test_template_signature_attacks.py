"""Attacks on signed templates, through the loader `broker serve` uses: a production template loads only with
two distinct owners' valid signatures over exactly this version."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.domain.template_signatures import SigningRule, TemplateOwner, sign_template
from broker.errors import TemplateError
from broker.storage.template_files import load_catalog, read_template, write_signature
from tests.conftest import REPO_SCOPES

PROD = "ecs-update-service-prod"


@pytest.fixture
def setup(tmp_path):
    folder = tmp_path / "scopes"
    folder.mkdir()
    shutil.copy(REPO_SCOPES / f"{PROD}.yaml", folder)
    keys = {n: Ed25519PrivateKey.generate() for n in ("alice", "bob", "mallory")}
    rule = SigningRule(owners=tuple(TemplateOwner(n, (keys[n].public_key(),)) for n in ("alice", "bob")), required=2)
    return folder, keys, rule


def signed(folder, keys, *who, template=None):
    template = template or read_template(folder / f"{PROD}.yaml")
    for owner, key in who:
        write_signature(folder, sign_template(template, owner=owner, key=keys[key]))


def refused(folder, rule) -> str:
    with pytest.raises(TemplateError) as exc:
        load_catalog(folder, signing=rule)
    assert exc.value.code == "template_signatures_missing"
    return str(exc.value)


def test_two_owners_load(setup):
    folder, keys, rule = setup
    signed(folder, keys, ("alice", "alice"), ("bob", "bob"))
    assert load_catalog(folder, signing=rule).loaded()[0].signed_by == ("alice", "bob")


def test_a_stranger_key_filed_under_an_owner_name(setup):
    folder, keys, rule = setup
    signed(folder, keys, ("alice", "alice"), ("bob", "mallory"))
    assert "not made by the key of any configured template owner" in refused(folder, rule)


def test_one_owner_signing_twice(setup):
    folder, keys, rule = setup
    signed(folder, keys, ("alice", "alice"), ("bob", "alice"))
    assert "already counted" in refused(folder, rule)


def test_signatures_of_a_different_digest(setup):
    folder, keys, rule = setup
    signed(folder, keys, ("alice", "alice"), ("bob", "bob"))
    path = folder / f"{PROD}.yaml"
    path.write_text(path.read_text().replace("max: 1800}", "max: 1799}"))
    assert "another version" in refused(folder, rule)


def test_a_renamed_template_with_the_signatures_moved_along(setup):
    folder, keys, rule = setup
    original = read_template(folder / f"{PROD}.yaml")
    path = folder / f"{PROD}.yaml"
    path.write_text(path.read_text().replace(f"name: {PROD}", "name: ecs-prod-renamed"))
    renamed = read_template(path)
    for owner in ("alice", "bob"):
        signature = sign_template(original, owner=owner, key=keys[owner])
        write_signature(folder, dataclasses.replace(signature, template=renamed.name, digest=renamed.version_digest))
    assert "not made by the key" in refused(folder, rule)
