"""Study descriptions used by the synthetic cohort (head-and-neck radiotherapy research lake).

Three lists of plain strings:

* ``INCLUDE_EXAMPLES`` -- studies a head-and-neck project wants; the shipped default criteria lists
  (``criteria/lists/``) put every one of them on the INCLUDE list.
* ``EXCLUDE_EXAMPLES`` -- studies it does not want; every one is on the EXCLUDE list.
* ``UNKNOWN_EXAMPLES`` -- new protocol names on neither list, so the demo run sends them to review.

``MODALITIES`` maps each description to the modalities the generator writes for it (the
ModalitiesInStudy of the study; the first one is the "main" modality). The generator varies case,
spacing and trailing dots of some descriptions, so matching must normalise (casefold, collapse
whitespace, strip trailing punctuation).
"""

from __future__ import annotations

# description -> modalities in study (first = main modality)
_INCLUDE: dict[str, tuple[str, ...]] = {
    "MRI Neck": ("MR",),
    "MRI Neck with contrast": ("MR",),
    "MRI Head and Neck": ("MR",),
    "MRI Oropharynx": ("MR",),
    "MRI Brain and Neck": ("MR",),
    "CT Neck with contrast": ("CT",),
    "CT Neck": ("CT",),
    "CT Neck and Chest": ("CT",),
    "CT Chest Abdomen Pelvis": ("CT",),
    "CT Thorax with contrast": ("CT",),
    "PET-CT Skull Base – Mid Thigh": ("PT", "CT"),  # en dash, as PACS exports it
    "PET-CT Whole Body FDG": ("PT", "CT"),
    "XR OPG": ("DX",),
    "XR Dental Panoramic": ("CR",),
    "XR Soft Tissue Neck": ("CR",),
    "Video fluoroscopy swallow": ("RF",),
    "Barium swallow": ("RF",),
    "NM Bone Scan Whole Body": ("NM",),
    "NM Thyroid Scan": ("NM",),
    "Carotid Angiogram": ("XA",),
    "MDT Imaging Report Head and Neck": ("SR",),
    # RT course exported from the planning system (no accession number); written by rtset.py only.
    "RT Planning Head and Neck": ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE"),
}

_EXCLUDE: dict[str, tuple[str, ...]] = {
    "MRI Knee Left": ("MR",),
    "MRI Lumbar Spine": ("MR",),
    "XR Chest": ("CR",),
    "XR Chest PA": ("DX",),
    "XR Hand Right": ("DX",),
    "CT Head (trauma)": ("CT",),
    "CT Head without contrast": ("CT",),
    "CT Colonography": ("CT",),
    "US Abdomen": ("US",),
    "Coronary Angiogram": ("XA",),
    "NM Myocardial Perfusion": ("NM",),
    "Dose Report": ("SR",),
    "Hysterosalpingogram": ("RF",),
}

_UNKNOWN: dict[str, tuple[str, ...]] = {
    "MRI Neck DWI Research Protocol v2": ("MR",),
    "CT Perfusion Larynx": ("CT",),
    "PET-CT FLT Head Neck Trial": ("PT", "CT"),
    "XR Mandible Lateral": ("DX",),
    "Modified Barium Swallow Study": ("RF",),
    "MR Sialography": ("MR",),
    "NM Sentinel Node Neck": ("NM",),
    "Structured Report Oncology": ("SR",),
}

# Descriptions the generator uses only for RT courses (never for random diagnostic studies).
RT_COURSE_DESCRIPTION = "RT Planning Head and Neck"
# RT verification (CBCT) studies: on neither list on purpose -- the run skips them by UID prefix
# (harvest.skip_uid_prefixes) before any list is consulted.
RT_VERIFICATION_DESCRIPTION = "CBCT Verification Head and Neck"

INCLUDE_EXAMPLES: list[str] = list(_INCLUDE)
EXCLUDE_EXAMPLES: list[str] = list(_EXCLUDE)
UNKNOWN_EXAMPLES: list[str] = list(_UNKNOWN)

MODALITIES: dict[str, tuple[str, ...]] = {**_INCLUDE, **_EXCLUDE, **_UNKNOWN}

__all__ = [
    "INCLUDE_EXAMPLES",
    "EXCLUDE_EXAMPLES",
    "UNKNOWN_EXAMPLES",
    "MODALITIES",
    "RT_COURSE_DESCRIPTION",
    "RT_VERIFICATION_DESCRIPTION",
]
