// The CNI subsystem's router flags, parsed once (in the CLI) into the typed config.
import type { Command } from 'commander';

export interface CniConfig {
  /** masquerade pods' traffic to outside the overlay (host/pod-masq.ts), as Weave Net does */
  masquerade: boolean;
}

export function addCniFlags(cmd: Command): void {
  cmd.option('--no-cni-masquerade', 'do not masquerade the traffic of pods (attached through CNI) to addresses outside the overlay');
}

export function parseCniFlags(flags: Record<string, unknown>): CniConfig {
  return { masquerade: flags.cniMasquerade !== false };
}
