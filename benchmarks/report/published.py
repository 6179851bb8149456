"""Published numbers of the papers, for the "Published numbers" section of a page.

Copied from /work/shared/docs/REFERENCE_RESULTS.md (leave-one-out, full
ranking; the papers' own settings, not this project's protocols).
"""

__all__ = [
    "ADREC_CLAIM",
    "ADREC_CLAIM_DATASETS",
    "ADREC_SOURCE",
    "PUBLISHED_METRICS",
    "REFERENCES",
]

_DIFFURECSYS = (
    "DiffuRecSys paper (Zolghadr et al., RecSys 2024 workshop), Tables 3 and 5, "
    "mean of 5 runs, same sequences as our files"
)
_CDDREC = (
    "CDDRec paper (Wang et al.), Table 2 (Recall@k is HR@k; MRR not truncated), "
    "same sequences as our files"
)
PUBLISHED_METRICS = ("hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20")
_DIFFURECSYS_MODELS = (
    "GRU4Rec",
    "SASRec",
    "BERT4Rec",
    "DuoRec",
    "DiffuRec",
    "DiffuRecSys-V1",
    "DiffuRecSys",
)


def _diffurecsys_rows(columns):
    """{model: {metric: value}} from one dataset's columns (HR@5..NDCG@20 rows)."""
    return {
        model: dict(zip(PUBLISHED_METRICS, values))
        for model, values in zip(_DIFFURECSYS_MODELS, zip(*columns))
    }


def _cddrec_rows(rows):
    """{model: {metric: value}} from (R@5, R@10, N@5, N@10) tuples."""
    metrics = ("hit@5", "hit@10", "ndcg@5", "ndcg@10")
    return {model: dict(zip(metrics, values)) for model, values in rows.items()}


# The ADRec paper reports relative gains only (Beauty, Toys and ML-100K are among
# its six datasets, in a smaller 5-core preparation than ours).
ADREC_SOURCE = "ADRec paper (summary in `docs/REFERENCE_RESULTS.md`)"
ADREC_CLAIM = {"hit@20": 0.1545, "ndcg@20": 0.1302}
ADREC_CLAIM_DATASETS = ("amazon-beauty", "amazon-toys", "ml-100k")

REFERENCES = {
    "amazon-beauty": [
        (
            _DIFFURECSYS,
            _diffurecsys_rows(
                [
                    (0.0206, 0.0371, 0.0370, 0.0541, 0.0557, 0.0669, 0.0667),
                    (0.0332, 0.0592, 0.0598, 0.0825, 0.0790, 0.0974, 0.0980),
                    (0.0526, 0.0893, 0.0935, 0.1102, 0.1110, 0.1399, 0.1400),
                    (0.0139, 0.0233, 0.0233, 0.0362, 0.0400, 0.0458, 0.0458),
                    (0.0175, 0.0284, 0.0306, 0.0447, 0.0475, 0.0556, 0.0559),
                    (0.0221, 0.0361, 0.0391, 0.0531, 0.0556, 0.0663, 0.0665),
                ]
            ),
        ),
        (
            _CDDREC,
            _cddrec_rows(
                {
                    "GRU4Rec": (0.0266, 0.0421, 0.0172, 0.0222),
                    "SASRec": (0.0416, 0.0633, 0.0274, 0.0343),
                    "BERT4Rec": (0.0396, 0.0595, 0.0257, 0.0321),
                    "DuoRec": (0.0278, 0.0403, 0.0193, 0.0233),
                    "CDDRec": (0.0542, 0.0770, 0.0376, 0.0447),
                }
            ),
        ),
    ],
    "amazon-toys": [
        (
            _DIFFURECSYS,
            _diffurecsys_rows(
                [
                    (0.0121, 0.0429, 0.0371, 0.0539, 0.0557, 0.0692, 0.0684),
                    (0.0184, 0.0652, 0.0524, 0.0744, 0.0746, 0.0986, 0.0971),
                    (0.0290, 0.0957, 0.0760, 0.1056, 0.0984, 0.1371, 0.1350),
                    (0.0077, 0.0248, 0.0259, 0.0340, 0.0417, 0.0458, 0.0455),
                    (0.0097, 0.0320, 0.0329, 0.0406, 0.0477, 0.0553, 0.0548),
                    (0.0123, 0.0397, 0.0368, 0.0472, 0.0537, 0.0650, 0.0643),
                ]
            ),
        ),
        (
            _CDDREC,
            _cddrec_rows(
                {
                    "GRU4Rec": (0.0226, 0.0363, 0.0148, 0.0192),
                    "SASRec": (0.0551, 0.0797, 0.0377, 0.0456),
                    "BERT4Rec": (0.0300, 0.0466, 0.0206, 0.0260),
                    "DuoRec": (0.0258, 0.0360, 0.0179, 0.0212),
                    "CDDRec": (0.0665, 0.0935, 0.0472, 0.0559),
                }
            ),
        ),
    ],
    "ml-1m": [
        (
            _DIFFURECSYS,
            _diffurecsys_rows(
                [
                    (0.0806, 0.1078, 0.1308, 0.1679, 0.1797, 0.1940, 0.1957),
                    (0.1344, 0.1810, 0.2219, 0.2540, 0.2626, 0.2829, 0.2843),
                    (0.2081, 0.2745, 0.3354, 0.3478, 0.3679, 0.3947, 0.3958),
                    (0.0475, 0.0681, 0.0804, 0.1091, 0.1212, 0.1319, 0.1319),
                    (0.0649, 0.0918, 0.1097, 0.1370, 0.1479, 0.1607, 0.1605),
                    (0.0834, 0.1156, 0.1384, 0.1607, 0.1744, 0.1888, 0.1886),
                ]
            ),
        ),
    ],
}
