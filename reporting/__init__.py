"""Reports built from the catalog: failures, NHS mapping, master availability sheet, EDW outbox, HTML."""
