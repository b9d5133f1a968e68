'use strict';
throw new Error('msgpackr-extract is replaced by a placeholder in weave.ts (see its package.json); msgpackr uses pure JS');
