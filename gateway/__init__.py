"""The gateway: Envoy's supervisor (`supervisor`) and the static server for the web console and run outputs (`console`)."""
