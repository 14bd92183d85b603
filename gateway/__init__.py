"""The gateway: Envoy's supervisor (`supervisor`), the static server for the web console and
run outputs (`console`), and their settings (`settings`)."""
