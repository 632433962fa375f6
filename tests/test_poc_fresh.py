"""Zero-compute updates built from the last global change G that slip under the 0.99 copy
limits (docs/REWARDS.md "Fresh work"): a copy of G diluted with noise, and sign(G) (removed
with G since issue 25: `sketch.sharpened`). They are
real clients (`ailo.testing.redteam`) beside honest workers on a real coordinator app with a
private holdout; what they add to G is not work, so the round's settlement pays them nothing
while every honest update is paid."""
import numpy as np
import pytest
import torch

from ailo.federation.core import sketch as sk
from ailo.federation.core.validate import ValidationConfig, fresh_cosines
from tests.campaigns import played_campaign

pytestmark = pytest.mark.slow  # a multi-round red-team campaign with training


ROUNDS = 3  # round 1 has no global change to copy; rounds 2 and 3 are judged


def test_fresh_cosines_separate_work_from_a_diluted_copy():
    rng = np.random.default_rng(0)
    k = 1024
    g = rng.standard_normal(k)
    new = rng.standard_normal(k)          # what is new at M_t, shared by the round's honest updates
    honest = [g + 0.3 * new + 0.3 * rng.standard_normal(k) for _ in range(3)]
    diluted = g + 0.3 * np.linalg.norm(g) / np.sqrt(k) * rng.standard_normal(k)
    scores = fresh_cosines(honest + [diluted], g)
    assert min(scores[:3]) > 0.3, scores
    assert abs(scores[3]) < ValidationConfig().min_fresh_cosine, scores
    assert fresh_cosines([g, 2 * g], np.zeros(k)) == [1.0, 1.0]  # no global change: nothing to judge


def test_a_farm_of_diluted_copies_cannot_drown_the_honest_updates():
    rng = np.random.default_rng(1)
    k, limit = 1024, ValidationConfig().min_fresh_cosine
    g, new = rng.standard_normal(k), rng.standard_normal(k)
    honest = [g + 0.2 * new + 0.3 * rng.standard_normal(k) for _ in range(3)]
    farm = [g + 0.3 * np.linalg.norm(g) / np.sqrt(k) * rng.standard_normal(k) for _ in range(100)]
    scores = fresh_cosines(honest + farm, g, limit)
    assert min(scores[:3]) >= limit and max(scores[3:]) < limit, (scores[:3], max(scores[3:]))
    # Without the trimming (every update one vote in a plain leave-one-out sum) they would be drowned:
    assert min(fresh_cosines(honest + farm, g, threshold=-1.0)[:3]) < limit


def test_sharpened_copies_of_the_global_change_are_removed_with_it():
    """sign(G) and its kin re-sharpen the averaged G the way AdamW sharpens honest work (honest
    Δ ≈ sign of a gradient that shares G's direction): after removing G alone their residuals
    agree with the honest ones (the old hole); after removing span{G, sign(G), sign(G)·|G|^½}
    (`sketch.sharpened`) they are noise, powers outside that basis included, and honest work,
    which carries what is new at M_t, keeps its agreement."""
    gen = torch.Generator().manual_seed(0)
    n, secret, limit = 100_000, b"k" * 32, ValidationConfig().min_fresh_cosine
    old = {"w": torch.randn(n, generator=gen)}
    new = {"w": old["w"] - torch.randn(n, generator=gen)}
    g = old["w"] - new["w"]
    fresh = torch.randn(n, generator=gen)   # the direction every honest worker finds at M_t
    honest = [torch.sign(g + 0.8 * fresh + 0.8 * torch.randn(n, generator=gen)) for _ in range(3)]
    copies = [torch.sign(g) * g.abs() ** p for p in (0.0, 0.25, 0.5, 0.75)]  # what is not caught: REWARDS.md
    sketches = [sk.sketch({"w": t}, secret) for t in honest + copies]
    before = fresh_cosines(sketches, sk.sketch({"w": g}, secret))
    assert min(before[3:]) > limit, before             # the hole: every copy would be paid
    after = fresh_cosines(sketches, sk.sketch({"w": g}, secret), also=sk.sharpened(old, new, secret))
    assert min(after[:3]) > limit and max(after[3:]) < limit, after


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, corpus_dir, one_thread):
    with played_campaign(tmp_path_factory.mktemp("fresh"), corpus_dir, ("diluted", "sign_global"), ROUNDS) as (app, _, camp):
        yield app, camp


@pytest.mark.parametrize("kind", ["diluted", "sign_global"])  # sign_global was a strict xfail: paid
def test_zero_compute_update_from_the_global_change_earns_nothing(campaign, kind):
    app, camp = campaign
    attacker = next(a for a in camp.attackers if a.kind == kind)
    judged = [o for o in attacker.outcomes if o["round"] >= 2]
    assert judged, attacker.outcomes
    for rnd in range(2, ROUNDS + 1):
        assert camp.earnings[rnd - 1][kind] == 0, (kind, rnd, camp.earnings[rnd - 1])
    # What it costs the attacker is the payment, whatever the refusal checks decided:
    accepted = [o for o in judged if o.get("status") == "accepted"]
    if accepted:
        poc = app.state.poc
        for o in accepted:
            scores = poc.fresh_scores(app.state.coordinator, o["round"])
            assert scores[o["update_id"]] < poc.validation.min_fresh_cosine, (o, scores)


def test_every_honest_update_is_paid(campaign):
    app, camp = campaign
    for rnd in range(1, ROUNDS + 1):
        for w in camp.workers:
            assert camp.earnings[rnd - 1][w.client_id] > 0, (rnd, camp.earnings[rnd - 1])
    assert camp.honest_refusals()[0] == 0
    poc, coord = app.state.poc, app.state.coordinator
    for rnd in range(2, ROUNDS + 1):
        scores = poc.fresh_scores(coord, rnd)
        honest = [u.id for u in coord.store.updates(rnd, "accepted") if u.client_id.startswith("honest-")]
        assert all(scores[i] >= poc.validation.min_fresh_cosine for i in honest), scores
