"""RT conversion: link CT → RTSTRUCT → RTPLAN → RTDOSE, then write analysis-ready NIfTI
volumes, DVHs and previews per patient (see docs/rt.md)."""
