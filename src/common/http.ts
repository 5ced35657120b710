// node:http through require, not `import`: an ESM import of a builtin builds its facade by reading every
// export, and node:http's lazy WebSocket/MessageEvent exports then load Node's bundled undici (a 745 KB
// source kept in memory, plus its compiled code) into every agent and CLI call for nothing.
import { createRequire } from 'node:module'

export const http = createRequire(import.meta.url)('node:http') as typeof import('node:http')
