"""The 14 CheXpert labels, in the order of report sentences and of every per-label table."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged_Cardiomediastinum",
    "Fracture",
    "Lung_Lesion",
    "Lung_Opacity",
    "Pleural_Effusion",
    "Pleural_Other",
    "Pneumonia",
    "Pneumothorax",
    "Support_Devices",
    "No_Finding",
)

# The five "competition" labels of CheXpert, reported separately by the field.
COMPETITION5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural_Effusion")

# MIMIC's official CSVs spell the labels with spaces ("No Finding"); the seed's CSVs use underscores.
SPACED_TO_LABEL: dict[str, str] = {name.replace("_", " "): name for name in LABELS}


def canonical_label_columns(columns) -> dict[str, str]:
    """Map the label columns found in ``columns`` (spaced or underscored) to the canonical names.

    Returns:
        ``{found_name: canonical_name}`` for every label column present.
    """
    found = {}
    for col in columns:
        name = str(col).strip()
        if name in LABELS:
            found[col] = name
        elif name in SPACED_TO_LABEL:
            found[col] = SPACED_TO_LABEL[name]
    return found
