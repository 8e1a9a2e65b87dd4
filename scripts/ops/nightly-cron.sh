#!/usr/bin/env bash
# Nightly retraining from cron. Install with `crontab -e`:
#   15 2 * * *  /opt/pipeline/scripts/ops/nightly-cron.sh /opt/pipeline/configs/production.yaml >> /var/log/pipeline-nightly.log 2>&1
# Exit codes (README "Nightly retraining"): 0 promoted or nothing new, 3 champion kept, 4 another night running,
# 2 bad input, 1 failure. cron mails any output; this wrapper stays quiet unless something needs a look.
set -u
repo="$(cd "$(dirname "$0")/../.." && pwd)"
config="${1:?usage: nightly-cron.sh CONFIG}"
cd "$repo"
"$repo/.venv/bin/python" -m pipeline nightly "$config" --quiet
status=$?
case $status in
  0) ;;                                                     # promoted, or nothing new
  3) echo "$(date -Is) nightly: challenger not promoted (champion kept); see history.csv" ;;
  4) echo "$(date -Is) nightly: previous night still running; skipped" ;;
  2) echo "$(date -Is) nightly: bad input; the champion is unchanged" ;;
  *) echo "$(date -Is) nightly: failed with exit code $status; the champion is unchanged" ;;
esac
exit $status
