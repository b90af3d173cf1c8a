"""Running detectors over scans: batch prediction over cohorts (sharded, resumable)."""
