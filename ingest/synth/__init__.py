"""Synthetic DICOM for the demo cohort and tests: study descriptions, image writers and RT sets."""
