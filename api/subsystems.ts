// The subsystems this build of the router runs, in start order. One line each.
import type { SubsystemModule } from './subsystem';

export const SUBSYSTEMS: SubsystemModule[] = [];
