"""preparers"""
