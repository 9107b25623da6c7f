"""Formula checks of the evaluation harness: accuracy, confusion, recall@k, AUC, membership
inference (and which images are its members), score rounding. Expected values by hand or by naive loops.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipunlearn import experiment, metrics

from .formula_helpers import (TOL, ListDataset, auc_pairs, cosine, cross_entropy, feature_model, matvec_rows,
                              rows)

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


# --------------------------------------------------------------------------- #
# A toy world: 3 classes, features of dimension 3
# --------------------------------------------------------------------------- #
CLASSNAMES = ["a", "b", "c"]


def toy_world():
    g = torch.Generator().manual_seed(30)
    model = feature_model(31, scale=4.0)
    # training set: 15 images, classes 0,1,2 repeating; image ids 0..14, the model "saw" ids < 10
    train = ListDataset(torch.randn(15, 3, generator=g), [i % 3 for i in range(15)], CLASSNAMES,
                        image_ids=list(range(15)))
    test = ListDataset(torch.randn(9, 3, generator=g), [i % 3 for i in range(9)], CLASSNAMES)
    clf = F.normalize(torch.randn(3, 3, generator=g), dim=0)  # [D, C], unit columns
    return model, train, test, clf


def naive_logits(model, dataset, idx, clf):
    """``logit_scale * cos(f_img(x), w_c)`` by loops (the columns of ``clf`` have unit norm)."""
    feats = matvec_rows(rows(dataset.images[list(idx)]), rows(model.wi))
    cols = rows(clf.T)
    s = model.logit_scale.exp().item()
    return [[s * cosine(f, w) for w in cols] for f in feats]


def naive_losses(model, dataset, idx, clf):
    lg = naive_logits(model, dataset, idx, clf)
    return [cross_entropy(r, int(dataset.targets[i])) for r, i in zip(lg, idx)]


# --------------------------------------------------------------------------- #
# Accuracy, per-class accuracy, confusion matrix
# --------------------------------------------------------------------------- #
def test_formula_zero_shot_accuracy_is_fraction_of_argmax_hits():
    model, train, _, clf = toy_world()
    idx = list(range(15))
    lg = naive_logits(model, train, idx, clf)
    hits = [max(range(3), key=lambda c: r[c]) == int(train.targets[i]) for r, i in zip(lg, idx)]
    assert metrics.accuracy(model, clf, train) == pytest.approx(sum(hits) / len(hits), abs=TOL)
    sub = [1, 4, 5]
    assert metrics.accuracy(model, clf, train, indices=sub) == pytest.approx(
        sum(hits[i] for i in sub) / 3, abs=TOL)
    per = metrics.per_class_accuracy(model, clf, train)
    for c, name in enumerate(CLASSNAMES):
        mine = [hits[i] for i in idx if int(train.targets[i]) == c]
        assert per[name] == pytest.approx(sum(mine) / len(mine), abs=TOL)


def test_formula_confusion_matrix_row_normalised_hand_worked():
    """targets [0, 0, 1, 2], predictions [0, 1, 1, 1], 4 classes -> rows [.5 .5 0 0], [0 1 0 0], [0 1 0 0], zeros."""
    logits = torch.tensor([[3.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 5.0, 1, 0], [0, 1.0, 0.5, 0]])
    got = metrics.confusion_matrix(logits, torch.tensor([0, 0, 1, 2]), num_classes=4)
    want = torch.tensor([[0.5, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]])
    assert torch.allclose(got, want, atol=TOL)


# --------------------------------------------------------------------------- #
# Retrieval recall@k, both directions
# --------------------------------------------------------------------------- #
def naive_recall(sim_rows, match_rows, k):
    hits = 0
    for s, m in zip(sim_rows, match_rows):
        order = sorted(range(len(s)), key=lambda j: -s[j])[:k]
        hits += any(m[j] for j in order)
    return hits / len(sim_rows)


def test_formula_retrieval_recall_hand_worked_both_directions():
    """Cosines (rows: images) [[1, .66, 0], [.77, .51, 0], [0, .75, 1]].

    i2t: image 1 ranks text 0 first, its own text second -> R@1 = 2/3, R@2 = 1.
    t2i: text 1 ranks image 2, image 0, then its own image 1 -> R@1 = 2/3, R@2 = 2/3.
    """
    img = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [0.0, 0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.0, 0.9], [0.0, 0.0, 1.0]])
    sims = [[cosine(i, t) for t in rows(txt)] for i in rows(img)]
    match = [[i == j for j in range(3)] for i in range(3)]
    out = metrics.retrieval_recall(img, txt, ks=(1, 2))
    for k in (1, 2):
        i2t, t2i = naive_recall(sims, match, k), naive_recall([list(c) for c in zip(*sims)], match, k)
        assert out[f"i2t_r{k}"] == pytest.approx(i2t, abs=TOL)
        assert out[f"t2i_r{k}"] == pytest.approx(t2i, abs=TOL)
    assert (out["i2t_r1"], out["i2t_r2"], out["t2i_r1"], out["t2i_r2"]) == pytest.approx((2 / 3, 1, 2 / 3, 2 / 3), abs=TOL)


def test_formula_retrieval_recall_groups_count_same_group_hits_both_directions():
    g = torch.Generator().manual_seed(40)
    img, txt = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    groups = [0, 1, 0, 2, 1, 2]
    sims = [[cosine(i, t) for t in rows(txt)] for i in rows(img)]
    match = [[a == b for b in groups] for a in groups]
    out = metrics.retrieval_recall(img, txt, ks=(1, 2, 5), groups=torch.tensor(groups))
    for k in (1, 2, 5):
        assert out[f"i2t_r{k}"] == pytest.approx(naive_recall(sims, match, k), abs=TOL)
        assert out[f"t2i_r{k}"] == pytest.approx(naive_recall([list(c) for c in zip(*sims)], match, k), abs=TOL)


# --------------------------------------------------------------------------- #
# AUC and membership inference
# --------------------------------------------------------------------------- #
def test_formula_auc_hand_worked_with_a_tie():
    """pos [0.9, 0.4, 0.6], neg [0.5, 0.4]: pairs won 1, 1, 0, 0.5 (tie), 1, 1 -> 4.5 / 6 = 0.75."""
    pos, neg = torch.tensor([0.9, 0.4, 0.6]), torch.tensor([0.5, 0.4])
    assert metrics.auc_score(pos, neg) == pytest.approx(0.75, abs=TOL)
    assert metrics.auc_score(neg, pos) == pytest.approx(0.25, abs=TOL)  # swapping sides: 1 - AUC
    assert metrics.auc_score(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == pytest.approx(0.5, abs=TOL)
    assert math.isnan(metrics.auc_score(torch.tensor([]), neg))


def test_formula_auc_equals_pairwise_loop():
    g = torch.Generator().manual_seed(41)
    pos, neg = torch.randint(0, 4, (7,), generator=g).float(), torch.randint(0, 4, (5,), generator=g).float()
    assert metrics.auc_score(pos, neg) == pytest.approx(auc_pairs(pos.tolist(), neg.tolist()), abs=TOL)


def test_formula_membership_inference_auc_of_negative_ce_members_vs_nonmembers():
    """mia = AUC(-CE(members), -CE(non-members)), CE at the model's own logit scale."""
    model, train, test, clf = toy_world()
    member, nonmember = [0, 3, 6, 9], [0, 3, 6]
    m_loss, n_loss = naive_losses(model, train, member, clf), naive_losses(model, test, nonmember, clf)
    out = metrics.membership_inference(model, clf, train, member_idx=member, nonmember_idx=nonmember,
                                       nonmember_dataset=test)
    assert out["mia"] == pytest.approx(auc_pairs([-v for v in m_loss], [-v for v in n_loss]), abs=TOL)
    assert out["member_loss"] == pytest.approx(sum(m_loss) / 4, abs=1e-5)
    assert out["nonmember_loss"] == pytest.approx(sum(n_loss) / 3, abs=1e-5)
    # the member set matters: retain images (class 1) as members give another AUC
    retain = [1, 4, 7, 10]
    wrong = auc_pairs([-v for v in naive_losses(model, train, retain, clf)], [-v for v in n_loss])
    assert abs(wrong - out["mia"]) > 1e-3


def forget_task(train, test, **kw):
    return experiment.build_task(train, test, kind="forget-class", target="a", seed=0, templates=("{}",),
                                 retain_per_class=None, eval_per_class=None, val_fraction=0.25, **kw)


def test_formula_mia_members_are_exactly_the_forget_class_images_the_model_trained_on():
    """Members: every forget-class training image with ``image_id < n_seen`` that is not a forget validation image
    of the unlearner (never retain images, never unseen, never validation)."""
    _, train, test, _ = toy_world()
    task = forget_task(train, test, n_seen=10)
    seen = [i for i in range(len(train)) if int(train.targets[i]) == 0 and int(train.image_ids[i]) < 10]
    assert seen == [0, 3, 6, 9] and len(task.forget_val) == 1  # val_fraction 0.25 of the class's 5 images
    expected = [i for i in seen if i not in task.forget_val.tolist()]
    assert task.member_idx.tolist() == expected and len(expected) == 3
    # without n_seen: every forget-class training image but the validation one
    assert forget_task(train, test).member_idx.tolist() == [i for i in [0, 3, 6, 9, 12]
                                                             if i not in task.forget_val.tolist()]
    # non-members of the evaluation: the forget test images (never trained on)
    assert task.eval_sets["forget"].tolist() == [i for i in range(len(test)) if int(test.targets[i]) == 0]
    # members_limit caps the draw, still forget-class seen images only
    capped = forget_task(train, test, n_seen=10, members_limit=2).member_idx.tolist()
    assert len(capped) == 2 and set(capped) <= set(expected)


def test_formula_evaluate_model_mia_is_forget_train_members_vs_forget_test_images():
    """evaluate_model's ``mia``: AUC(-CE) of the task's members (forget-class images the model saw)
    against the forget test images, computed here by loops over the datasets themselves."""
    model, train, test, clf = toy_world()
    task = forget_task(train, test, n_seen=10)
    out = experiment.evaluate_model(model, task, tokenizer=None, classifier=clf)
    members = [i for i in range(len(train)) if int(train.targets[i]) == 0 and int(train.image_ids[i]) < 10
               and i not in task.forget_val.tolist()]
    nonmembers = [i for i in range(len(test)) if int(test.targets[i]) == 0]
    m_loss, n_loss = naive_losses(model, train, members, clf), naive_losses(model, test, nonmembers, clf)
    expected = auc_pairs([-v for v in m_loss], [-v for v in n_loss])
    assert out["mia"] == pytest.approx(expected, abs=TOL)
    # the example tells members from retain images: retain training images as members give another number
    retain = task.retain_train.tolist()
    wrong = auc_pairs([-v for v in naive_losses(model, train, retain, clf)], [-v for v in n_loss])
    assert abs(wrong - expected) > 1e-3
    # and forget accuracy is the argmax hit rate on the forget test images
    lg = naive_logits(model, test, nonmembers, clf)
    hits = [max(range(3), key=lambda c: r[c]) == 0 for r in lg]
    assert out["forget_acc"] == pytest.approx(sum(hits) / len(hits), abs=TOL)


def test_formula_paper_b_evaluation_mia_members_vs_forget_test_images(monkeypatch):
    """paper_b.evaluate_class_forgetting: mia of member_dataset[member_idx] against dataset[forget_idx]."""
    from clipunlearn.papers import paper_b

    model, train, test, clf = toy_world()
    monkeypatch.setattr(metrics, "build_classifier", lambda *a, **k: clf)
    member, forget = [0, 3, 6], [0, 3, 6]
    out = paper_b.evaluate_class_forgetting(model, tokenizer=None, classnames=CLASSNAMES, templates=("{}",),
                                              dataset=test, forget_idx=forget, retain_idx=[1, 2],
                                              member_dataset=train, member_idx=member)
    expected = auc_pairs([-v for v in naive_losses(model, train, member, clf)],
                         [-v for v in naive_losses(model, test, forget, clf)])
    assert out["mia"] == pytest.approx(expected, abs=TOL)


# --------------------------------------------------------------------------- #
# Rounding of selection scores
# --------------------------------------------------------------------------- #
def test_formula_round_score_rounds_to_score_decimals_on_both_sides():
    assert metrics.SCORE_DECIMALS == 4
    assert metrics.round_score(0.12344) == 0.1234
    assert metrics.round_score(0.12346) == 0.1235
    assert metrics.round_score(0.05 + 3e-8) == 0.05  # float noise below 1e-4 is no difference
    assert metrics.round_score(0.05 + 1e-3) == 0.051
    assert metrics.round_score(-0.33336) == -0.3334
