// The NetworkPolicy controller's typed errors (stable codes for tests and status).
import { WeaveError } from '../lib/errors';

export class NpcError extends WeaveError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(code, message, context, options);
    this.name = 'NpcError';
  }
}
