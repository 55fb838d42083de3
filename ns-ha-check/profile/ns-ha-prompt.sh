# shellcheck shell=sh
# ns-ha-prompt.sh: show this firewall's HA role in the shell prompt, as
# [P:MASTER], [S:BACKUP] (P primary, S secondary/backup). Install as
# /etc/profile.d/ns-ha-prompt.sh.
#
# The health monitor (`ns-ha-check monitor`) writes the marker into
# /run/ns-ha/prompt whenever it changes, so drawing a prompt runs no ns-ha
# tool: bash reads the file with its `read` builtin before each prompt
# (PROMPT_COMMAND, no fork); other shells (busybox ash) read it in a
# command substitution (a subshell, no program run). NS_HA_PROMPT_FILE
# overrides the path (tests, a node root). No marker file: no marker.

NS_HA_PROMPT_FILE=${NS_HA_PROMPT_FILE:-/run/ns-ha/prompt}

case "${PS1:-}" in
*NS_HA_ROLE* | *ns_ha_role*) ;; # sourced twice: once is enough
*)
	if [ -n "${BASH_VERSION:-}" ]; then
		PROMPT_COMMAND='NS_HA_ROLE=; read -r NS_HA_ROLE 2>/dev/null <"$NS_HA_PROMPT_FILE"'"${PROMPT_COMMAND:+; $PROMPT_COMMAND}"
		PS1='${NS_HA_ROLE:+$NS_HA_ROLE }'"${PS1:-\$ }"
	else
		ns_ha_role() {
			read -r _ns_ha_r 2>/dev/null <"$NS_HA_PROMPT_FILE" && printf '%s ' "$_ns_ha_r"
		}
		PS1='$(ns_ha_role)'"${PS1:-\$ }"
	fi
	;;
esac
