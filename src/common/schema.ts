// The one place the schema library is imported: zod/mini (about 2 MB of RSS per process, where zod classic
// costs about 14 MB), with zod's English messages configured before any schema parses; zod/mini ships
// none. Modules import `* as z` from here, never zod itself, so every process gets the locale.
import { config } from 'zod/mini'
import en from 'zod/v4/locales/en.js'

config(en())

export * from 'zod/mini'
