"""Study selection: include/exclude lists, normalised matching, and the clinician review queue."""
