"""AdaNeg (docs/method.md, "Score") against a transcription of OpenOOD-VLM's `TTAPromptPostprocessor_noadagap.postprocess`.

The reference keeps the published data layout (a [texts, 1 + memory length, d] slot tensor, an
index and an entropy per slot, per-image loops, a softmax per group) and never calls synood's
AdaNeg code. The group permutation is drawn on a CPU generator on both sides (docs/method.md).
"""

from __future__ import annotations

import pytest
import torch

from synood_cli.scores import ScoreInputs, Scorer
from synood_cli.scores.adaneg import AdaNegSettings


def reference_stream(batches, text_features, class_num, memory_size, thres, gap, lambda_val, group_num, logit_scale=100.0, seed=0):
    feat_memory = text_features.unsqueeze(1)
    feat_memory = torch.cat((feat_memory, torch.zeros_like(feat_memory).repeat(1, memory_size, 1)), dim=1)
    indice_memory = torch.ones(text_features.size(0))
    entropy_memory = torch.zeros(feat_memory.size(0), feat_memory.size(1))

    def grouped(output):
        pos_logit, neg_logit = output[:, :class_num], output[:, class_num:]
        drop = neg_logit.size(1) % group_num
        if drop > 0:
            neg_logit = neg_logit[:, :-drop]
        idx = torch.randperm(neg_logit.shape[1], generator=torch.Generator().manual_seed(seed))
        neg_logit = neg_logit.T[idx].T.reshape(pos_logit.shape[0], group_num, -1)
        scores = []
        for i in range(group_num):
            full_sim = torch.cat([pos_logit, neg_logit[:, i, :]], dim=-1).softmax(dim=-1)
            scores.append(full_sim[:, : pos_logit.shape[1]].sum(dim=-1).unsqueeze(-1))
        return torch.cat(scores, dim=-1).mean(dim=-1)

    def store(activate, logits, offset):
        _, pred_all = torch.max(logits, dim=1)
        prob = torch.softmax(logits, dim=1)
        for i in range(activate.size(0)):
            if activate[i].item():
                c = pred_all[i].item() + offset
                p = prob[i]
                ent = -(p * (torch.log(p + 1e-8))).sum()
                if indice_memory[c] == memory_size:
                    if (ent < entropy_memory[c]).sum() == 0:
                        pass
                    else:
                        _, order = torch.sort(entropy_memory[c])
                        feat_memory[c][order[-1]] = image_features[i]
                        entropy_memory[c][order[-1]] = ent
                else:
                    feat_memory[c][indice_memory[c].long()] = image_features[i]
                    entropy_memory[c][indice_memory[c].long()] = ent
                    indice_memory[c] += 1

    out = []
    for image_features in batches:
        output_vanilla = logit_scale * image_features @ text_features.t()
        conf_in_vanilla = grouped(output_vanilla)
        store(conf_in_vanilla > (thres + gap * (1 - thres)), output_vanilla[:, :class_num], 0)
        store(conf_in_vanilla < (thres - gap * thres), output_vanilla[:, class_num:], class_num)
        sa = feat_memory.mean(1)
        sa = sa / sa.norm(dim=-1, keepdim=True)
        output = logit_scale * (image_features.unsqueeze(1) * sa).sum(-1)
        out.append(grouped(output) + conf_in_vanilla * lambda_val)
    return torch.cat(out)


def stream(seed, k=4, m=23, d=16, n=60):
    g = torch.Generator().manual_seed(seed)
    ids = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    negs = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    # images near an ID text, near a negative, or in between: confident both ways and unsure ones
    anchors = torch.cat([ids, negs])[torch.randint(0, k + m, (n,), generator=g)]
    noise = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 1.5
    return ids, negs, torch.nn.functional.normalize(anchors + noise, dim=1)


@pytest.mark.parametrize("memory_length,batch,seed", [(10, 16, 0), (3, 7, 1), (2, 60, 2), (4, 1, 3)])
def test_adaneg_equals_the_transcribed_postprocessor(memory_length, batch, seed):
    ids, negs, f = stream(seed)
    settings = AdaNegSettings(memory_length=memory_length)
    inputs = ScoreInputs(id_text=ids, neg_text=negs, tau=0.01, seed=0, prepared={"adaneg_settings": settings})
    scorer = Scorer("adaneg", inputs)
    got = torch.cat([scorer(f[i : i + batch])[0] for i in range(0, len(f), batch)])
    want = reference_stream([f[i : i + batch] for i in range(0, len(f), batch)], torch.cat([ids, negs]), len(ids),
                            memory_length, 0.5, 0.5, 0.1, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    memory = inputs.prepared["adaneg"]
    if memory_length < 10:
        assert any(n == memory_length - 1 for n in memory.stored.values())  # some memory filled up (replacement ran)
    assert any(c >= len(ids) for c in memory.stored) and any(c < len(ids) for c in memory.stored)  # both sides adapted


def test_adaneg_depends_on_the_order_and_repeats_for_the_same_order():
    ids, negs, f = stream(5)

    def run(features):
        scorer = Scorer("adaneg", ScoreInputs(id_text=ids, neg_text=negs, tau=0.01, seed=0))
        return torch.cat([scorer(features[i : i + 8])[0] for i in range(0, len(features), 8)])

    first = run(f)
    assert torch.equal(first, run(f))
    perm = torch.randperm(len(f), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(run(f[perm]), first[perm])


def test_score_adaneg_records_its_stream_and_is_refused_under_ranks(invoke, tmp_path, tiny_weights, image_tree):
    import json

    from conftest import assert_clean_error, rows_of, seed_home

    home = seed_home(tiny_weights, tmp_path / "home")
    r = invoke("score", str(image_tree.root), "--profile", "tiny", "--method", "adaneg", "-o", str(tmp_path / "a.jsonl"), home=home)
    assert r.returncode == 0, r.stderr
    assert len(rows_of((tmp_path / "a.jsonl").read_text(), "jsonl")) >= 2  # (the same order, the same scores: the unit test above)
    r = invoke("evaluate", "--id", str(image_tree.root), "--ood", str(image_tree.root), "--profile", "tiny", "--method", "adaneg",
               "--format", "json", home=home)
    assert r.returncode == 0, r.stderr
    adaptive = json.loads(r.stdout)["identities"]["adaneg"]["adaptive"]
    assert adaptive["memory_length"] == 10 and adaptive["threshold"] == 0.5 and adaptive["gap"] == 0.5 and adaptive["lam"] == 0.1
    assert adaptive["batch_size"] >= 1 and adaptive["seed"] == 0 and "order" in adaptive
    r = invoke("score", str(image_tree.root), "--profile", "tiny", "--method", "adaneg", home=home,
               env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert_clean_error(r, 2, "transductive", "2 ranks")


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_the_reference_rows_say_which_published_numbers_are_test_time_adaptive(fmt, capsys):
    from synood_cli.cli.tables import render_suite
    from synood_cli.suites import get_suite

    suite = get_suite("imagenet-mos")
    m = {"fpr95": 0.2, "fpr95_ood_positive": 0.3, "auroc": 0.9, "aupr_in": 0.9, "aupr_out": 0.8, "n_id": 10, "n_ood": 10}
    render_suite(suite, {"neglabel": ({k: m for k in suite.ood_keys()}, m)}, fmt, {}, True)
    out = capsys.readouterr().out
    if fmt == "json":
        import json

        body = json.loads(out)
        assert body["reference_test_time_adaptive"] == ["AdaNeg"] and body["reference"]["AdaNeg"]["average"] == {"fpr95": 17.95, "auroc": 96.7}
    elif fmt == "csv":
        assert "paper (test-time adaptive),AdaNeg,average,17.95,96.7" in out and "paper,CSP,average,17.51,95.76" in out
    else:
        assert "AdaNeg (paper, test-time adaptive)" in out and "CSP (paper)" in out and "NegLabel (paper)" in out


def test_adaneg_stays_exact_when_the_adapted_logits_dwarf_the_plain_ones():
    """Images alike each other and far from every text: once they fill a memory, that proxy's logit (~99) exceeds
    the row's largest plain logit (~10) by more than exp() can take in fp32 (88); the row goes to logsumexp."""
    g = torch.Generator().manual_seed(0)
    texts = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].T[:12]  # orthonormal: 2 ID texts, 10 negatives
    ids, negs = texts[:2], texts[2:]
    other = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].T  # a direction with no text in it
    away = torch.nn.functional.normalize(other[0] - texts.T @ (texts @ other[0]), dim=0)
    f = torch.nn.functional.normalize(0.1 * ids[0] + away + 1e-3 * torch.randn(40, 16, generator=g), dim=1)
    scorer = Scorer("adaneg", ScoreInputs(id_text=ids, neg_text=negs, tau=0.01, seed=0))
    got = torch.cat([scorer(f[i : i + 10])[0] for i in range(0, 40, 10)])
    want = reference_stream([f[i : i + 10] for i in range(0, 40, 10)], texts, 2, 10, 0.5, 0.5, 0.1, 5)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
