"""What every table and figure of the report shows, as plain data (the one place to edit).

Results are keyed by zoo model name and perturbation name (``clean`` for none); this module maps
them to the paper's rows and columns. Nothing here computes anything.
"""
from __future__ import annotations

from ..data.subsets import COOC_THRESHOLDS, TABLE3_CLASSES

# Zoo model name -> row label (the paper's wording; "DeepLabv3" is whatever DeepLabv3 arch the
# results record, e.g. the small CPU one for the shipped SynthVOC models).
METHOD_LABELS: dict[str, str] = {
    "baseline": "DeepLabv3",
    "mixup": "DeepLabv3 + Mixup",
    "cutmix": "DeepLabv3 + CutMix",
    "binding": "DeepLabv3 + Binding (CC)",
    "binding-no-fbh": "+ Binding (w/o FBH)",
    "binding-no-denoise": "+ Binding (w/o DN)",
    "binding-rfb": "+ Binding (R_fb)",
    "binding-cafb": "+ Binding (Ca_fb)",
    "binding-wrfb": "+ Binding (WR_fb)",
    "binding-mfb": "+ Binding (M_fb)",
    "segmix": "DeepLabv3 + SegMix (CM)",
    "segmix-no-denoise": "+ SegMix (w/o DN)",
}

# The four methods of Tables 1-4 and Figures 3-6, in the paper's row order.
MAIN_METHODS: tuple[str, ...] = ("baseline", "mixup", "cutmix", "binding")
# The IJCV 2023 extension's method (SourceSep-CM): a row/line after MAIN_METHODS in Tables 1-4 and
# Figure 4 whenever the results hold it (IJCV Table 1 layout: DeepLabv3, +Mixup, +CutMix, +CC, +CM).
SEGMIX_METHODS: tuple[str, ...] = ("segmix",)

# IJCV Table 11 (max unique categories per blended pair, no denoising): model name -> row label.
# segmix-maxG: `--blend cm --no-denoise --cm-over-limit skip --gamma G`; segmix-maxinf: `--cm-over-limit
# none`; segmix-no-denoise (zoo): the default `--cm-over-limit delta09` ("inf + gamma-thres").
TABLE11_ROWS: dict[str, str] = {
    "segmix-max2": "max = 2",
    "segmix-max3": "max = 3",
    "segmix-max4": "max = 4",
    "segmix-maxinf": "max = inf",
    "segmix-no-denoise": "inf + gamma-thres",
}
# The paper's numbers (VOC 2012 val, DeepLabv3-ResNet-101), quoted in the table's caption.
TABLE11_PAPER: dict[str, float] = {"segmix-max2": 77.2, "segmix-max3": 77.6, "segmix-max4": 77.7,
                                   "segmix-maxinf": 77.0, "segmix-no-denoise": 78.3}

# The models evaluated on the out-of-context split (extra table B), when the dataset has one.
OOC_METHODS: tuple[str, ...] = ("baseline", "binding")

# The binding model whose branches Figure 2 shows.
CONFIDENCE_MODEL = "binding"

# Table 1: val rows for every main method; a test row per method that has test-split results.
TABLE1_SPLITS: tuple[str, ...] = ("val", "test")

# Table 2: subset name -> (column group, column label), in the paper's column order.
TABLE2_COLUMNS: dict[str, tuple[str, str]] = {
    "occ1": ("Occlusion", "1-Occ"),
    "occall": ("Occlusion", "All-Occ"),
    "obj1": ("Number of Objects", "1-Obj"),
    "obj2": ("Number of Objects", "2-Obj"),
    "obj3": ("Number of Objects", "3-Obj"),
    "obj4": ("Number of Objects", "4-Obj"),
    "uniq2": ("Number of Unique Objects", "2-Uniq"),
    "uniq3": ("Number of Unique Objects", "3-Uniq"),
    "uniq4": ("Number of Unique Objects", "4-Uniq"),
}

# Table 3: the classes c (data.subsets.TABLE3_CLASSES, the paper's column order), shown on
# person-<c> then only-<c>.
TABLE3_CLASS_LABELS: dict[str, str] = {
    "horse": "horse", "motorbike": "mbike", "bicycle": "bicycle", "bottle": "bottle", "car": "car",
}
TABLE3_GROUPS: dict[str, str] = {"person": "Co-occur with person", "only": "Exclusive"}

# Table 4: perturbation name (as shipped in perturbations/) -> (column group, column label).
TABLE4_COLUMNS: dict[str, tuple[str, str]] = {
    "clean": ("", "Clean"),
    "uap-resnet": ("UAP", "ResNet"),
    "uap-googlenet": ("UAP", "GNet"),
    "gduap-rno": ("GD-UAP", "R-No"),
    "gduap-rall": ("GD-UAP", "R-All"),
    "gduap-rpart": ("GD-UAP", "R-Part"),
}

# How an evaluated perturbation finds its Table 4 column: by the role its JSON meta records, never
# by its file name. ``table4_column`` (e.g. "UAP ResNet") when present; else a "uap" crafted on a
# classifier whose source_model.arch (lower case, without - and _) starts with one of these; else a
# "gd-uap" whose prior_label / prior is one of these.
TABLE4_UAP_SOURCE_ARCHS: dict[str, tuple[str, ...]] = {
    "uap-resnet": ("resnet152",),
    "uap-googlenet": ("googlenet", "inceptionv1"),
}
TABLE4_GDUAP_PRIORS: dict[str, tuple[str, ...]] = {
    "gduap-rno": ("R-No", "none", "no"),
    "gduap-rall": ("R-All", "all"),
    "gduap-rpart": ("R-Part", "partial", "part"),
}
# The mark of a Table 4 cell whose perturbation was crafted on the evaluated model itself.
WHITE_BOX_MARK = "\u2020"  # dagger

# Table 5 (a): blending strategy column -> zoo model ("No" = no blending = the baseline).
TABLE5A_COLUMNS: dict[str, str] = {
    "No": "baseline",
    "C_fb": "binding",
    "R_fb": "binding-rfb",
    "Ca_fb": "binding-cafb",
    "WR_fb": "binding-wrfb",
    "M_fb": "binding-mfb",
}
TABLE5A_LATEX: dict[str, str] = {
    "No": "No",
    "C_fb": r"$\mathcal{C}_{fb}$",
    "R_fb": r"$\mathcal{R}_{fb}$",
    "Ca_fb": r"$\mathcal{Ca}_{fb}$",
    "WR_fb": r"$W\mathcal{R}_{fb}$",
    "M_fb": r"$\mathcal{M}_{fb}$",
}
# Table 5 (b) and (c): zoo model -> row label, in the paper's row order.
TABLE5B_ROWS: dict[str, str] = {
    "baseline": "DeepLabv3",
    "binding-no-denoise": "+ ours (w/o DN)",
    "binding": "+ ours (w/ DN)",
}
TABLE5C_ROWS: dict[str, str] = {
    "baseline": "DeepLabv3",
    "binding-no-fbh": "+ ours (w/o FBH)",
    "binding": "+ ours (w/ FBH)",
}

# Figure 4: co-occurrence thresholds (x axis, the paper's order) -> subset name.
FIGURE4_SUBSETS: dict[int, str] = {t: f"cooc{t}" for t in COOC_THRESHOLDS}

# Qualitative figures: how many images each shows.
FIGURE3_IMAGES = 4  # val images with the most distinct classes (complex scenes)
FIGURE5_IMAGES = 3  # out-of-context images (the ooc split, when the dataset has one)
FIGURE6_IMAGES = 2  # val images whose objects are most occluded
FIGURE2_IMAGES = 2  # binding-model confidence maps: one val image and one blended pair

# Table titles (the paper's captions, shortened).
TITLES: dict[str, str] = {
    "table1": "Table 1: mIoU (%) of the baselines and feature binding",
    "table2": "Table 2: mIoU (%) on complex scenes (subsets of the val split)",
    "table3": "Table 3: IoU (%) of class c when it co-occurs with person and when it appears alone",
    "table4": "Table 4: mIoU (%) under universal adversarial perturbations",
    "table5a": "Table 5 (a): mIoU (%) of the image blending strategies",
    "table5b": "Table 5 (b): mIoU (%) with and without the denoising stage (DN)",
    "table5c": "Table 5 (c): mIoU (%) with and without the feature binding head (FBH)",
    "table11": "IJCV Table 11: mIoU (%) of SegMix by the max unique categories of a blended pair (no denoising)",
    "extra_all": "Extra table A: every evaluated model, clean and under each universal perturbation (val)",
    "extra_ooc": "Extra table B: mIoU (%) on the out-of-context split (ooc) beside val",
    "all_inputs": "Extra table C: mIoU (%) of every evaluated model under every evaluated input",
    "beyond": "Robustness beyond the paper: mIoU (%) clean, under universal perturbations and per-image attacks",
    "beyond_subsets": "Robustness beyond the paper on the paper's subsets: mIoU (%) clean and under per-image attacks",
    "corruption": "Common corruptions, {label}: mIoU (%) per corruption and severity",
    "corruption_subsets": "Common corruptions on the paper's subsets: clean and mean corrupted mIoU (%), relative robustness, mCD",
    "leaderboard": "Leaderboard: one row per model (mIoU %)",
}

# The reference model of the corruption degradation CD (Kamann & Rother normalise by a reference model).
CORRUPTION_REFERENCE = "baseline"

# The subsets of the attack-on-subsets table and figure (Table 2's: occlusion, number of objects,
# number of unique objects), after the full split.
ATTACK_SUBSETS: tuple[str, ...] = ("all", "occ1", "occall", "obj1", "obj2", "obj3", "obj4", "uniq2", "uniq3", "uniq4")

FIGURE_TITLES: dict[str, str] = {
    "figure2": "Figure 2 (style): confidence maps of the dominant (S_t), phantom (S_p) and binding (S_fb) outputs",
    "figure3": "Figure 3 (style): qualitative results on the val split (complex scenes)",
    "figure4": "Figure 4: mIoU (%) on images with unlikely class co-occurrences",
    "figure5": "Figure 5 (style): qualitative results on out-of-context scenes (ooc split)",
    "figure6": "Figure 6 (style): highly occluded val images",
    "robustness": "Table 4 as a chart: mIoU (%) clean and under each universal perturbation",
    "attack_eps": "mIoU (%) vs attack budget eps: worst case over the per-image attacks, one line per method",
    "attack_eps_subsets": "mIoU (%) vs attack budget eps on the paper's subsets (worst case over the per-image attacks)",
    "corruption_heatmap": "mIoU (%) per corruption and severity, one panel per method",
    "corruption_severity": "Mean mIoU (%) over the corruptions vs severity (0 = clean), one line per method",
}
