"""Synthetic DICOM for the demo cohort and tests (never real patient data).

* ``descriptions`` -- study descriptions: INCLUDE / EXCLUDE / UNKNOWN examples and their modalities.
* ``dicom``        -- deterministic UIDs (:class:`~ingest.synth.dicom.UidFactory`), Part 10 writing and
                      tiny diagnostic images for CT, MR, PT, CR, DX, RF, XA, NM, US and Basic Text SR.
* ``rtset``        -- :func:`~ingest.synth.rtset.write_rt_set`: a geometry-consistent planning CT +
                      RTSTRUCT + RTPLAN + RTDOSE with analytic ROIs (:class:`~ingest.synth.rtset.RoiSpec`).

The cohort itself (patients, side inputs, config) is :func:`ingest.demo.generate`.
"""
