// placeholder replaced below
export async function runCniDemo(): Promise<number> { return 1; }
