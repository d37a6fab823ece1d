"""Stage 1, data: sources (bundled, downloaded, local copies), safe archive reading, and the
one checksummed tensor file per dataset that training loads onto the device."""
